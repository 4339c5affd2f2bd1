"""Fine-tune a SAM 2 / 2.1 / MedSAM2 mask decoder (``transformers.Sam2Model``): SAM v1's recipe, SAM 2's frames.

The same recipe as :mod:`pixelperfect.training.finetune`: image and prompt encoders frozen, the mask decoder
trained with AdamW, box prompts enlarged by ``0..box_shift`` px per side, the loss of each box the best of the
three candidates' Dice + BCE plus the IoU-head MSE (``loss.sam_loss``), validation Dice over every held-out box
decoded as the pipeline decodes, the best weights kept, early stopping after ``patience`` validations, progress in
the training's run row. What SAM 2 changes:

- **Frames.** SAM 2 resizes the image to a ``side``² square (1024, MedSAM2 512), not longest side + pad. A box goes
  to that frame by ``x * side / W``, ``y * side / H`` (``Sam2Processor``'s rule); the targets are area-resampled to
  the decoder's whole ``side / 4`` square output, and the loss is computed there, on the low-resolution logits
  (``low_res_shape`` of SAM v1 would crop a padding that SAM 2 does not have). Validation upsamples the logits of the
  candidate with the highest predicted IoU straight to the image's size (bilinear, then ``> 0``), as
  ``Sam2Processor.post_process_masks`` does, so the mask scored is the mask the pipeline keeps.
- **Three feature levels.** The cache holds the decoder's three inputs (after the ``conv_s0``/``conv_s1``
  projections and the no-memory embedding): ``(32, s/4, s/4)``, ``(64, s/8, s/8)`` and ``(256, s/16, s/16)``
  float16, i.e. 8 MiB per image at 1024² (4x a ViT-B embedding's 2 MiB) and 2 MiB at MedSAM2's 512²
  (``CachedEmbedding.nbytes``; the stored object is a few hundred bytes more).
- **Learning rate.** 1e-4 for pretrained weights as for SAM; the random ``sam2_tiny`` gets 3e-3 (``recipe``).
- **Output.** ``OUT/best/`` is a Hugging Face directory (``config.json`` + ``model.safetensors``,
  ``save_pretrained``) that ``submit --checkpoint OUT/best`` loads; ``best.json`` names its step and Dice.
  ``OUT/last/`` holds the final weights the same way.

Not (yet) for SAM 2: ``--resume`` from step checkpoints and ``--train-encoder`` (refused with a clear error).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from pixelperfect.pipeline.model.sam2 import tie_positional_embeddings
from pixelperfect.pipeline.model.sam2_family import sam2_config, sam2_spec
from pixelperfect.pipeline.model.weights import resolve_device
from pixelperfect.pipeline.score.overlap import dice
from pixelperfect.training.cache import CachedEmbedding, EmbeddingCache
from pixelperfect.training.checkpoints import BEST_INFO, CONFIG, METRICS, CheckpointStore
from pixelperfect.training.data import TrainImage, jitter_boxes, load_images
from pixelperfect.training.schedule import Schedule, no_improvement_warning
from pixelperfect.training.setup import TrainError, TrainSetup, describe

#: Where the best and the final weights go under ``--out``: Hugging Face model directories.
BEST_DIR, LAST_DIR = "best", "last"
#: ImageNet mean and std on 0..1 (SAM 2's and ``Sam2ImageProcessor``'s normalisation).
_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
_STD = np.array([0.229, 0.224, 0.225], np.float32)


def load_sam2(model: str, files: dict[str, bytes] | None) -> Any:
    """A ``Sam2Model`` of ``model``: from a Hugging Face directory's files, or seeded random weights (``None``)."""
    from transformers import Sam2Model

    if files is None:
        return random_sam2(model, 1234)
    with tempfile.TemporaryDirectory() as tmp:
        for name, data in files.items():
            (Path(tmp) / name).write_bytes(data)
        try:
            return Sam2Model.from_pretrained(tmp).eval()
        except Exception as exc:
            raise TrainError(f"the checkpoint directory does not load as a {model} model: {exc}") from None


def random_sam2(model: str, seed: int) -> Any:
    """A random ``Sam2Model`` that can learn: PyTorch's default initialisers (unit-scale features, mask logits
    ~0.2), not ``transformers``' normal(0, 0.02), which leaves a dead network (features of std 0.02, mask logits
    ~1e-4 that a box moves by 1e-4: the decoder sat on the "whole frame or nothing" plateau and validation Dice
    fell to 0); the positional matrices tied as in a real checkpoint."""
    from transformers import Sam2Model

    torch.manual_seed(seed)
    net = Sam2Model(sam2_config(model))
    for module in net.modules():
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()
    return tie_positional_embeddings(net).eval()


def square_boxes(boxes: np.ndarray, original_size: tuple[int, int], side: int) -> np.ndarray:
    """XYXY pixel boxes of an ``(H, W)`` image -> the model's ``side``² input frame (``Sam2Processor``'s rule)."""
    h, w = original_size
    return boxes * np.array([side / w, side / h, side / w, side / h])


def square_targets(full: np.ndarray, side: int) -> np.ndarray:
    """``(P, H, W)`` bool targets -> ``(P, side/4, side/4)`` float32 in [0, 1], area-resampled (the decoder's frame)."""
    low = side // 4
    return np.stack([cv2.resize(m.astype(np.float32), (low, low), interpolation=cv2.INTER_AREA) for m in full])


def model_pixels(grey: np.ndarray, side: int) -> torch.Tensor:
    """``(H, W) uint8`` -> ``(3, side, side)`` float32, resized and normalised as ``Sam2ImageProcessor`` does."""
    rgb = cv2.resize(np.repeat(grey[:, :, None], 3, axis=2), (side, side), interpolation=cv2.INTER_LINEAR)
    return torch.from_numpy(((rgb.astype(np.float32) / 255.0 - _MEAN) / _STD).transpose(2, 0, 1).copy())


class Sam2Trainer:
    """One SAM 2 fine-tuning, driven by :func:`pixelperfect.training.finetune.train`."""

    def __init__(
        self,
        setup: TrainSetup,
        on_progress: Callable[[dict[str, Any]], None] | None,
        on_step: Callable[[int], None] | None,
    ) -> None:
        self.s, self.config, self.settings = setup, setup.config, setup.settings
        if self.config.resume or self.config.train_encoder:
            raise TrainError("SAM 2 models fine-tune the mask decoder from cached embeddings only: no --resume, "
                             "no --train-encoder (yet)")  # fmt: skip
        self.on_progress, self.on_step = on_progress, on_step
        self.ckpts = CheckpointStore(setup.out_store)
        self.device = resolve_device(self.settings.device)
        self.side = sam2_spec(self.config.model).image_size
        torch.manual_seed(self.config.seed)
        self.model: Any = load_sam2(self.config.model, setup.base_files).to(self.device)
        self.model.requires_grad_(False)
        self.model.mask_decoder.requires_grad_(True)
        self.cache = EmbeddingCache(
            setup.cache_store,
            checkpoint_hash=setup.base_hash,
            variant_hash=setup.variant.spec_hash,
            precision="fp32",
            memory_bytes=self.config.cache_memory_mb * 2**20,
        )
        self.progress: dict[str, Any] = {"phase": "loading"}
        self._last_progress = 0.0
        self.encoded = 0

    def report(self, force: bool = False, **values: Any) -> None:
        self.progress.update(values, updated_at=time.time())
        if not force and time.monotonic() - self._last_progress < 2.0:
            return
        self._last_progress = time.monotonic()
        self.s.save_progress(self.progress)
        if self.on_progress:
            self.on_progress(dict(self.progress))

    # --- data and embeddings -------------------------------------------------------------------------------

    def load(self) -> tuple[list[TrainImage], list[TrainImage]]:
        plan, skipped = self.s.plan, self.s.skipped
        loaded: list[list[TrainImage]] = [[], []]
        for side, specs in enumerate((plan.train, plan.val)):
            args = (self.config, self.settings, self.s.variant, self.side)
            for img in load_images(specs, *args, keep_full=True, skipped=skipped):
                assert img.full is not None and img.pixels is not None
                img.low_res = square_targets(img.full, self.side)
                if side == 0:
                    img.full = None  # training needs only the low-resolution targets
                if self.cache.get(img.sha256) is None:
                    self._encode(img)
                img.pixels = None
                loaded[side].append(img)
                self.report(phase="encoding", encoded=self.encoded)
        train, val = loaded
        if not train or not val:
            raise TrainError(
                f"after loading, {len(train)} training and {len(val)} validation images have prompts "
                f"(skipped: {describe(skipped)}); both need at least one"
            )
        return train, val

    @torch.no_grad()
    def _encode(self, img: TrainImage) -> None:
        assert img.pixels is not None
        x = model_pixels(img.pixels, self.side)[None].to(self.device)
        levels = [f[0].to("cpu", torch.float16) for f in self.model.get_image_embeddings(x)]
        input_size = (self.side, self.side)
        self.cache.put(img.sha256, CachedEmbedding(levels[-1], img.original_size, input_size, tuple(levels[:-1])))
        self.encoded += 1

    def embeddings(self, img: TrainImage) -> list[torch.Tensor]:
        emb = self.cache.get(img.sha256)
        if emb is None:
            raise TrainError(f"the cached embedding of {img.key} vanished from {self.cache.store.url} during training")
        return [t.to(self.device, torch.float32)[None] for t in (*emb.levels, emb.features)]

    def decode(self, img: TrainImage, boxes: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits (P, 3, side/4, side/4), predicted IoU (P, 3))`` for pixel boxes of ``img``."""
        box_t = torch.as_tensor(square_boxes(boxes, img.original_size, self.side), dtype=torch.float32)
        out = self.model(
            image_embeddings=self.embeddings(img), input_boxes=box_t[None].to(self.device), multimask_output=True
        )
        return out.pred_masks[0].float(), out.iou_scores[0].float()

    # --- steps ---------------------------------------------------------------------------------------------

    def step(self, batch: Sequence[TrainImage], rng: np.random.Generator) -> float:
        from pixelperfect.training.loss import sam_loss

        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for img in batch:
            n, most = len(img.boxes), self.config.max_prompts
            idx = np.arange(n) if n <= most else np.sort(rng.choice(n, most, replace=False))
            boxes = jitter_boxes(img.boxes[idx], self.config.box_shift, rng, img.original_size)
            logits, iou_pred = self.decode(img, boxes)
            target = torch.from_numpy(img.low_res[idx]).to(self.device)
            loss = sam_loss(logits, iou_pred, target, self.config.iou_loss_weight)
            (loss / len(batch)).backward()
            total += float(loss.detach()) / len(batch)
        self.optimizer.step()
        return total

    @torch.no_grad()
    def validate(self, images: Sequence[TrainImage]) -> float:
        """Mean Dice over every validation box: the candidate of highest predicted IoU, upsampled to the image."""
        self.model.eval()
        scores: list[float] = []
        for img in images:
            logits, iou_pred = self.decode(img, img.boxes)
            best = logits[torch.arange(len(img.boxes)), iou_pred.argmax(dim=1)]
            full = F.interpolate(best[:, None], img.original_size, mode="bilinear", align_corners=False)[:, 0] > 0
            assert img.full is not None
            masks = full.cpu().numpy()
            scores.extend(dice(masks[p], img.full[p]) for p in range(len(img.boxes)))
        return float(np.mean(scores))

    def save(self, directory: str) -> None:
        """The model as a Hugging Face directory under ``--out`` (``save_pretrained``, then each file to the store)."""
        with tempfile.TemporaryDirectory() as tmp:
            self.model.save_pretrained(tmp)
            for path in sorted(Path(tmp).iterdir()):
                kind = "application/json" if path.suffix == ".json" else "application/octet-stream"
                self.s.out_store.put(f"{directory}/{path.name}", path.read_bytes(), kind)

    def save_best(self, step: int, epoch: int, val: float) -> None:
        self.save(BEST_DIR)
        self.ckpts.write_json(BEST_INFO, {"step": step, "epoch": epoch, "val_dice": val, "format": "huggingface"})

    # --- loop ----------------------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        started = time.monotonic()
        try:
            train_imgs, val_imgs = self.load()
            self._write_config(train_imgs, val_imgs)
            metrics = self.fit(train_imgs, val_imgs)
            metrics["wall_seconds"] = round(time.monotonic() - started, 3)
            self.ckpts.write_json(METRICS, metrics)
        except BaseException as exc:
            self.report(force=True, phase="failed", error=f"{type(exc).__name__}: {exc}")
            self.s.finish(error=f"{type(exc).__name__}: {exc}")
            raise
        self.report(force=True, phase="done")
        self.s.finish(error=None)
        return metrics

    def fit(self, train_imgs: list[TrainImage], val_imgs: list[TrainImage]) -> dict[str, Any]:
        cfg = self.config
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        plan = Schedule.of(cfg, len(train_imgs))
        st: dict[str, Any] = {"step": 0, "best": -1.0, "best_step": 0, "since_best": 0, "curve": [], "losses": [],
                              "stopped": False, "val_every": plan.val_every}  # fmt: skip
        t0 = time.monotonic()
        st["before"] = st["best"] = self.validate(val_imgs)
        self.save_best(0, 0, st["best"])
        self.report(force=True, phase="training", step=0, total_steps=plan.total, val_dice_before=st["before"])
        since = self.cache.stats.copy()
        while st["step"] < plan.total and not st["stopped"]:
            step = int(st["step"])
            epoch, pos = divmod(step, plan.per_epoch)
            order = np.random.default_rng([cfg.seed, epoch, 0xE0C]).permutation(len(train_imgs))
            batch = [train_imgs[i] for i in order[pos * cfg.batch_size : (pos + 1) * cfg.batch_size]]
            st["losses"].append(self.step(batch, np.random.default_rng([cfg.seed, step, 0x57E9])))
            st["step"] = step = step + 1
            if self.on_step:
                self.on_step(step)
            if plan.validates(step):
                val = self.validate(val_imgs)
                st["curve"].append({"epoch": plan.epoch_of(step), "step": step,
                                    "train_loss": float(np.mean(st["losses"])), "val_dice": val,
                                    "cache": self.cache.stats.minus(since),
                                    "seconds": round(time.monotonic() - t0, 3)})  # fmt: skip
                since, st["losses"] = self.cache.stats.copy(), []
                if val > st["best"]:
                    st.update(best=val, best_step=step, since_best=0)
                    self.save_best(step, plan.epoch_of(step), val)
                else:
                    st["since_best"] += 1
                st["stopped"] = st["since_best"] >= cfg.patience and step < plan.total
                self.report(force=True, step=step, val_dice=val, best_val_dice=st["best"])
            self.report(step=step, loss=st["losses"][-1] if st["losses"] else st["curve"][-1]["train_loss"])
        self.save(LAST_DIR)
        st["seconds"] = time.monotonic() - t0
        curve = st["curve"]
        return {
            "val_dice_before": st["before"],
            "val_dice_after": st["best"],
            "val_dice_final": curve[-1]["val_dice"] if curve else st["before"],
            "best_step": st["best_step"],
            "best_checkpoint": self.s.out_store.url_for(BEST_DIR),
            "last_checkpoint": self.s.out_store.url_for(LAST_DIR),
            "steps": st["step"],
            "total_steps": plan.total,
            "epochs": len(curve),
            "stopped_early": bool(st["stopped"]),
            "resumed_from_step": None,
            "train_seconds": round(float(st["seconds"]), 3),
            "curve": curve,
            "cache": {"encoded_this_session": self.encoded, "bytes_per_image": self._bytes_per_image(train_imgs)},
            "pseudo_labels": cfg.pseudo_labels,
            "run": self.s.run_name,
            "lr": cfg.learning_rate,
            "val_every": plan.val_every,
            "warning": no_improvement_warning(st, cfg),
        }

    def _bytes_per_image(self, images: list[TrainImage]) -> int:
        emb = self.cache.get(images[0].sha256)
        return 0 if emb is None else emb.nbytes

    def _write_config(self, train: list[TrainImage], val: list[TrainImage]) -> None:
        cfg = self.config
        trainable = int(sum(p.numel() for p in self.model.parameters() if p.requires_grad))
        value = {
            "config": cfg.as_dict(),
            "identity_hash": cfg.identity_hash(),
            "run": self.s.run_name,
            "data": {
                "train_images": len(train),
                "val_images": len(val),
                "train_keys": [i.key for i in train],
                "val_keys": [i.key for i in val],
            },
            "variant": {"name": self.s.variant.name, "spec": self.s.variant.spec, "hash": self.s.variant.spec_hash},
            "model": {
                "name": cfg.model,
                "family": "sam2",
                "base_checkpoint": self.s.base_url,
                "base_checkpoint_sha256": self.s.base_hash,
                "image_size": self.side,
                "trainable": ["mask_decoder"],
                "trainable_parameters": trainable,
            },
            "recipe": {
                "optimizer": "AdamW",
                "lr": cfg.learning_rate,
                "weight_decay": cfg.weight_decay,
                "loss": "min over 3 candidates of (Dice + BCE) at side/4 + iou_loss_weight * MSE(IoU head)",
                "frames": f"boxes and targets in the {self.side}² square input frame",
            },
        }
        self.ckpts.write_json(CONFIG, value)
