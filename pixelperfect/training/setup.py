"""Everything a training checks and prepares before the model is touched: variant, base checkpoint, ``--out``
(refusing to mix two trainings in one place), the data plan and the run row; and what it writes beside the
weights (``config.json``) and into the database as it goes."""

from __future__ import annotations

import importlib.metadata
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch

from pixelperfect.config import RANDOM_CHECKPOINT, Settings
from pixelperfect.inputs.sources import absolute_url
from pixelperfect.pipeline.model.sam2_family import is_sam2
from pixelperfect.pipeline.model.weights import sha256_hex
from pixelperfect.pipeline.preprocess.variants import Variant, parse_variant
from pixelperfect.storage import ObjectStore, open_store, read_url
from pixelperfect.training import tracking
from pixelperfect.training.checkpoints import CONFIG, LAST, CheckpointStore
from pixelperfect.training.data import DataPlan, TrainImage, plan_data
from pixelperfect.training.recipe import TrainConfig
from pixelperfect.version import CODE_VERSION


class TrainError(ValueError):
    """A training that cannot start or continue (the message says why and what to do)."""


def describe(skipped: dict[str, str]) -> str:
    counts = Counter(skipped.values())
    return ", ".join(f"{reason}: {n}" for reason, n in sorted(counts.items())) or "none"


@dataclass
class TrainSetup:
    config: TrainConfig
    settings: Settings
    variant: Variant
    base_bytes: bytes | None
    base_url: str | None
    base_hash: str
    out_store: ObjectStore
    cache_store: ObjectStore
    plan: DataPlan
    run_name: str
    run_id: int | None = None
    skipped: dict[str, str] = field(default_factory=dict)
    #: SAM 2: the starting Hugging Face directory's files (``config.json``, ``model.safetensors``); None = random
    base_files: dict[str, bytes] | None = None

    def save_progress(self, progress: dict[str, Any]) -> None:
        if self.run_id is not None:
            tracking.update_progress(self.settings, self.run_id, progress)

    def finish(self, error: str | None) -> None:
        if self.run_id is None:
            return
        splits = {**{s.key: "train" for s in self.plan.train}, **{s.key: "val" for s in self.plan.val}}
        tracking.finish_run(self.settings, self.run_id, splits=splits, skipped=self.skipped, error=error)

    def write_config(self, sam: torch.nn.Module, train: list[TrainImage], val: list[TrainImage]) -> None:
        """``config.json``: the full training config beside the checkpoints (torchvision's references habit)."""
        cfg = self.config
        trainable = [n for n, m in sam.named_children() if any(p.requires_grad for p in m.parameters())]
        summary = {k: v for k, v in self.plan.summary.items() if k not in ("train_keys", "val_keys")}
        data = {
            **summary,
            "train_images": len(train),
            "val_images": len(val),
            "train_prompts": int(sum(len(i.boxes) for i in train)),
            "val_prompts": int(sum(len(i.boxes) for i in val)),
            "skipped": dict(Counter(self.skipped.values())),
            "train_keys": [i.key for i in train],
            "val_keys": [i.key for i in val],
        }
        value = {
            "config": cfg.as_dict(),
            "identity_hash": cfg.identity_hash(),
            "run": self.run_name,
            "pseudo_labels": cfg.pseudo_labels,
            "targets": self.plan.summary["targets"],
            "data": data,
            "variant": {"name": self.variant.name, "spec": self.variant.spec, "hash": self.variant.spec_hash},
            "model": {
                "name": cfg.model,
                "base_checkpoint": self.base_url,
                "base_checkpoint_sha256": self.base_hash,
                "image_size": int(sam.image_encoder.img_size),  # type: ignore[union-attr,arg-type]
                "trainable": trainable,
                "frozen": [n for n, _ in sam.named_children() if n not in trainable],
                "trainable_parameters": int(sum(p.numel() for p in sam.parameters() if p.requires_grad)),
            },
            "recipe": {
                "optimizer": "AdamW",
                "lr": cfg.lr,
                "weight_decay": cfg.weight_decay,
                "loss": "min over 3 candidates of (Dice + BCE) + iou_loss_weight * MSE(IoU head, true IoU)",
                "box_prompts": f"mask component or annotated boxes, each side enlarged by U{{0..{cfg.box_shift}}} px",
                "precision": "bf16 autocast" if _bf16(self.settings) else "fp32",
                "device": self.settings.device,
            },
            "code_version": CODE_VERSION,
            "versions": {"torch": torch.__version__, "segment_anything": _version("segment-anything")},
        }
        CheckpointStore(self.out_store).write_json(CONFIG, value)
        if self.run_id is not None:
            tracking.update_progress(self.settings, self.run_id, {"phase": "training"}, data=data)


def prepare(config: TrainConfig, settings: Settings, *, track: bool) -> TrainSetup:
    """Validate everything that can be validated before training; record the run row when ``track``."""
    try:
        variant = parse_variant(config.variant)
    except ValueError as exc:
        raise TrainError(f"--variant {config.variant!r}: {exc}") from None
    base_files = None
    if is_sam2(config.model):
        base_url, base_files, base_hash = _base_directory(config, settings)
        base_bytes = None
    else:
        base_url, base_bytes, base_hash = _base_checkpoint(config, settings)
    out_store = open_store(absolute_url(config.out), endpoint_url=settings.s3_endpoint_url)
    ckpts = CheckpointStore(out_store)
    existing = ckpts.read_json(CONFIG)
    if existing is not None and existing.get("identity_hash") != config.identity_hash():
        raise TrainError(
            f"{config.out} holds another training (data, model or hyper-parameters differ): choose another --out"
        )
    last = ckpts.read_json(LAST)
    if last is not None and not config.resume:
        raise TrainError(
            f"{config.out} already holds this training up to step {last['step']}: pass --resume to continue it "
            "or choose another --out"
        )
    cache_root = config.cache_url or absolute_url(settings.store_url).rstrip("/") + "/cache"
    cache_store = open_store(absolute_url(cache_root), endpoint_url=settings.s3_endpoint_url)
    plan = plan_data(config, settings)
    setup = TrainSetup(
        config,
        settings,
        variant,
        base_bytes,
        base_url,
        base_hash,
        out_store,
        cache_store,
        plan,
        tracking.run_name(config),
        base_files=base_files,
    )
    if track:
        gt = {}
        if config.gt_masks:
            gt = {s.key: s.mask_url for s in plan.train + plan.val if s.mask_url}
        splits = {**{s.key: "train" for s in plan.train}, **{s.key: "val" for s in plan.val}}
        setup.run_id = tracking.start_run(
            config,
            settings,
            variant={"name": variant.name, "spec": variant.spec, "hash": variant.spec_hash},
            checkpoint=base_url,
            checkpoint_sha256=None if base_bytes is None and base_files is None else base_hash,
            keys=splits,
            gt_masks=gt,  # type: ignore[arg-type]
        )
    return setup


def _base_checkpoint(config: TrainConfig, settings: Settings) -> tuple[str | None, bytes | None, str]:
    """``(url, bytes, hash)`` of the starting weights; seeded random weights only for ``sam_tiny``."""
    checkpoint = config.checkpoint or settings.checkpoint
    if not checkpoint or checkpoint == RANDOM_CHECKPOINT:
        if config.model != "sam_tiny" and checkpoint != RANDOM_CHECKPOINT:
            raise TrainError(f"model {config.model} needs --checkpoint (the weights to fine-tune)")
        return RANDOM_CHECKPOINT, None, f"random-{config.model}"
    url = checkpoint if "://" in checkpoint else absolute_url(checkpoint)
    try:
        data = read_url(url, endpoint_url=settings.s3_endpoint_url)
    except Exception as exc:
        raise TrainError(f"cannot read checkpoint {checkpoint}: {exc}") from None
    return url, data, sha256_hex(data)


#: The files of a SAM 2 checkpoint directory (``save_pretrained``'s single-file layout).
SAM2_FILES = ("config.json", "model.safetensors")


def _base_directory(config: TrainConfig, settings: Settings) -> tuple[str | None, dict[str, bytes] | None, str]:
    """SAM 2: ``(url, {file: bytes}, sha256 of model.safetensors)`` of a Hugging Face directory (path, ``file://``
    or ``s3://`` prefix); seeded random weights only for ``sam2_tiny``."""
    checkpoint = config.checkpoint or settings.checkpoint
    if not checkpoint or checkpoint == RANDOM_CHECKPOINT:
        if config.model != "sam2_tiny" and checkpoint != RANDOM_CHECKPOINT:
            raise TrainError(f"model {config.model} needs --checkpoint (a Hugging Face directory to fine-tune)")
        return RANDOM_CHECKPOINT, None, f"random-{config.model}"
    url = (checkpoint if "://" in checkpoint else absolute_url(checkpoint)).rstrip("/")
    files = {}
    for name in SAM2_FILES:
        try:
            files[name] = read_url(f"{url}/{name}", endpoint_url=settings.s3_endpoint_url)
        except Exception as exc:
            raise TrainError(
                f"{checkpoint} is not a SAM 2 checkpoint directory: cannot read {name} ({exc}); a Meta-format .pt "
                "converts with `pixelperfect convert-checkpoint`"
            ) from None
    return url, files, sha256_hex(files["model.safetensors"])


def _bf16(settings: Settings) -> bool:
    """As :class:`~pixelperfect.pipeline.model.sam.SamSegmenter` decides: asked for, or ``auto`` on CUDA."""
    cuda = settings.device.startswith("cuda") or (settings.device == "auto" and torch.cuda.is_available())
    return settings.precision == "bf16" or (settings.precision == "auto" and cuda)


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None
