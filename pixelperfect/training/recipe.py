"""The training configuration: one validated, JSON-serialisable record (the CLI, the Celery task and the files
written beside every checkpoint all carry the same dictionary).

Defaults follow the published MedSAM recipe (Ma et al. 2024, ``train_one_gpu.py``): image and prompt encoders
frozen, mask decoder trained, AdamW with learning rate 1e-4 (pretrained SAM; the random ``sam_tiny`` gets 1e-3,
see :data:`DEFAULT_LR`) and weight decay 0.01, box prompts taken from the
ground-truth masks and enlarged by 0-20 px per side, Dice + BCE loss. The IoU-head regression (MSE against the
true IoU of each candidate mask) is micro-sam's (Archit et al. 2025); it is on by default here because the
pipeline picks the candidate with the highest *predicted* IoU, so that head must learn the fine-tuned masks too.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from typing import Any

from pixelperfect.config import MIN_AREA, MODEL_NAMES

#: Models the trainer can fine-tune (GrabCut has nothing to learn; SAM 3: inference only); SAM 2 names:
#: training/sam2_finetune.py.
TRAINABLE_MODELS = tuple(m for m in MODEL_NAMES if m not in ("grabcut", "sam3"))
#: Fields that change where and how a training runs, not what it learns: left out of the identity hash.
RUNTIME_FIELDS = ("resume", "run", "cache_url", "cache_memory_mb")
#: Fields of the schedule: a resumed training may extend or shorten them (``--resume --max-steps 2000``).
SCHEDULE_FIELDS = ("epochs", "max_steps", "patience", "checkpoint_every", "val_every")
#: Learning rate when none is given. Pretrained SAM keeps MedSAM's 1e-4; the randomly initialised ``sam_tiny``
#: (the demo's stand-in) does not move at 1e-4 (measured: validation Dice ~0.1 after 100 steps) and learns at
#: 1e-3 (~0.8 after 200 steps; ``pixelperfect demo``).
#: The random ``sam2_tiny`` (``training/sam2_finetune.random_sam2``) leaves its "whole frame or nothing" plateau after
#: ~100 steps at 3e-3 (validation Dice 0.09 -> 0.78 at 200 steps) and ~150 at 1e-3 (0.58 at 160, 0.76 at 300).
DEFAULT_LR: dict[str, float] = {"sam_tiny": 1e-3, "sam2_tiny": 3e-3}
MEDSAM_LR = 1e-4
#: Epochs when none are given: the random ``sam_tiny`` needs ~200 steps (50 epochs of a 24-phantom set).
DEFAULT_EPOCHS: dict[str, int] = {"sam_tiny": 50}
EPOCHS = 10


def default_lr(model: str) -> float:
    """The learning rate a model trains with when ``lr`` is not given."""
    return DEFAULT_LR.get(model, MEDSAM_LR)


def default_epochs(model: str) -> int:
    """The epochs a model trains for when ``epochs`` is not given."""
    return DEFAULT_EPOCHS.get(model, EPOCHS)


@dataclass(frozen=True)
class TrainConfig:
    """What to train on, from which weights, how, and where to write.

    URLs are ``file://``/``s3://`` or bare paths; boxes and coordinates are pixels of the original image.
    ``epochs`` bounds the passes over the training images and ``max_steps`` (if set) the optimizer steps;
    whichever is reached first ends training, as does early stopping after ``patience`` validations without
    a better validation Dice. Validation runs every ``val_every`` optimizer steps (default: whole epochs, at least
    20 steps; ``training/schedule.py``) and at the last step. ``lr`` and ``epochs`` left ``None`` take the model's
    defaults (:func:`default_lr`, :func:`default_epochs`).
    """

    source: str
    out: str
    model: str = "sam_vit_b"
    checkpoint: str | None = None
    variant: str = "raw"
    gt_masks: str | None = None
    annotations: str | None = None
    annotations_format: str = "rsna"
    targets_from_run: str | None = None
    min_consistency_iou: float | None = None
    epochs: int | None = None  # None: default_epochs(model), resolved at construction
    max_steps: int | None = None
    batch_size: int = 4  # images per optimizer step; every image brings up to max_prompts boxes
    max_prompts: int = 8
    lr: float | None = None  # None: default_lr(model), resolved at construction
    weight_decay: float = 0.01
    box_shift: int = 20  # px each box side moves outward, drawn uniformly from 0..box_shift (MedSAM)
    iou_loss_weight: float = 1.0
    train_encoder: bool = False
    seed: int = 0
    val_fraction: float = 0.2
    patience: int = 5  # validations without a better validation Dice before stopping
    val_every: int | None = None  # optimizer steps between validations; None: once per epoch
    checkpoint_every: int = 100
    min_area: int = MIN_AREA  # mask components this small give no box prompt (the research's contour filter)
    run: str | None = None
    resume: bool = False
    cache_url: str | None = None  # embedding cache root; default: <store_url>/cache
    cache_memory_mb: int = 4096  # embeddings kept in memory between epochs (fp16 ViT-B: 2 MiB each)

    def __post_init__(self) -> None:
        if self.model not in TRAINABLE_MODELS:
            raise ValueError(f"model {self.model!r} cannot be fine-tuned; choose from {', '.join(TRAINABLE_MODELS)}")
        if not self.source:
            raise ValueError("source is empty")
        if not self.out:
            raise ValueError("out is empty")
        if self.targets_from_run is None and self.gt_masks is None:
            raise ValueError("training needs targets: --gt-masks URL or --targets-from-run RUN")
        if self.targets_from_run is not None and self.gt_masks is not None:
            raise ValueError("give either --gt-masks or --targets-from-run, not both")
        if self.targets_from_run is not None and self.min_consistency_iou is None:
            raise ValueError("--targets-from-run needs --min-consistency-iou X (0..1)")
        if self.min_consistency_iou is not None and not 0.0 <= self.min_consistency_iou <= 1.0:
            raise ValueError(f"min_consistency_iou must be in [0, 1], got {self.min_consistency_iou}")
        if self.annotations_format not in ("rsna", "csv"):
            raise ValueError(f"annotations_format must be rsna or csv, got {self.annotations_format!r}")
        if self.lr is None:  # frozen: the resolved values are what config.json and the checkpoints record
            object.__setattr__(self, "lr", default_lr(self.model))
        if self.epochs is None:
            object.__setattr__(self, "epochs", default_epochs(self.model))
        if self.val_every is not None:
            _check_int(self, "val_every", 1, 10_000_000)
        _check_int(self, "epochs", 1, 100_000)
        if self.max_steps is not None:
            _check_int(self, "max_steps", 1, 10_000_000)
        _check_int(self, "batch_size", 1, 1024)
        _check_int(self, "max_prompts", 1, 256)
        _check_int(self, "box_shift", 0, 1000)
        _check_int(self, "patience", 1, 100_000)
        _check_int(self, "checkpoint_every", 1, 10_000_000)
        _check_int(self, "min_area", 0, 10_000_000)
        _check_int(self, "cache_memory_mb", 0, 10_000_000)
        if not 0.0 < self.lr < 1.0:  # type: ignore[operator]  # resolved above
            raise ValueError(f"lr must be in (0, 1), got {self.lr}")
        if not 0.0 <= self.weight_decay < 1.0:
            raise ValueError(f"weight_decay must be in [0, 1), got {self.weight_decay}")
        if not 0.0 <= self.iou_loss_weight <= 100.0:
            raise ValueError(f"iou_loss_weight must be in [0, 100], got {self.iou_loss_weight}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")

    @property
    def learning_rate(self) -> float:
        """``lr`` as resolved at construction (never ``None``)."""
        return float(self.lr if self.lr is not None else default_lr(self.model))

    @property
    def pseudo_labels(self) -> bool:
        return self.targets_from_run is not None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown training option(s): {', '.join(unknown)}")
        return cls(**values)

    def identity_hash(self) -> str:
        """sha256 of what defines the training: data, targets, model, variant, hyper-parameters, seed.

        Runtime choices and the schedule are left out, so ``--resume`` may extend a training; anything else
        changed under the same ``--out`` (or ``--run``) is refused.
        """
        skip = RUNTIME_FIELDS + SCHEDULE_FIELDS
        learnt = {k: v for k, v in self.as_dict().items() if k not in skip}
        return hashlib.sha256(json.dumps(learnt, sort_keys=True).encode()).hexdigest()


def _check_int(config: TrainConfig, name: str, low: int, high: int) -> None:
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name} must be an integer in {low}..{high}, got {value!r}")
