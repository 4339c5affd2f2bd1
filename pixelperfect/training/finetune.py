"""Fine-tune SAM on box prompts (MedSAM recipe), checkpointed, resumable, with cached frozen-encoder embeddings.

The prompt encoder is frozen; the mask decoder is trained; the image encoder is frozen unless ``train_encoder``.
Frozen, it encodes every image once per (checkpoint, variant): the embeddings go to the store
(:mod:`pixelperfect.training.cache`) and every epoch trains the decoder from there.

Loss per box: Dice + BCE of each of the decoder's three candidate masks against the target at the decoder's
low resolution, the smallest of the three back-propagated (SAM's multi-mask rule), plus ``iou_loss_weight`` x
MSE of the IoU head against each candidate's true IoU (micro-sam). Training with the multi-mask output, unlike
MedSAM's single mask, keeps the fine-tuned model right for the pipeline, which decodes three candidates and
keeps the one with the highest predicted IoU; validation Dice is computed through that same predictor.

Determinism: the epoch's image order is drawn from ``(seed, epoch)`` and a step's prompt sampling and box jitter
from ``(seed, step)``, so a training resumed from a step checkpoint continues exactly as if never interrupted.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pixelperfect.config import Settings
from pixelperfect.pipeline.model.sam import SamEmbedding, SamSegmenter
from pixelperfect.pipeline.model.sam2_family import is_sam2
from pixelperfect.pipeline.model.weights import load_sam, resolve_device
from pixelperfect.pipeline.score.overlap import dice
from pixelperfect.training.cache import CachedEmbedding, CacheStats, EmbeddingCache
from pixelperfect.training.checkpoints import BEST, CONFIG, LAST, METRICS, CheckpointStore, model_bytes, state_dict_of
from pixelperfect.training.data import TrainImage, jitter_boxes, load_images
from pixelperfect.training.loss import sam_loss
from pixelperfect.training.recipe import TrainConfig
from pixelperfect.training.schedule import Schedule, no_improvement_warning
from pixelperfect.training.setup import TrainError, TrainSetup, describe, prepare

#: Progress callbacks (database row, Celery events) fire at most this often, and at every validation.
PROGRESS_INTERVAL_S = 2.0
__all__ = ["TrainError", "TrainResult", "sam_loss", "train"]


@dataclass
class TrainResult:
    run: str
    run_id: int | None
    out_url: str
    best_url: str
    metrics: dict[str, Any]


def train(
    config: TrainConfig,
    settings: Settings,
    *,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    on_step: Callable[[int], None] | None = None,
    track: bool = True,
) -> TrainResult:
    """Train per ``config``; write checkpoints, ``config.json`` and ``metrics.json`` to ``config.out``.

    ``on_progress`` receives the progress record (phase, step, epoch, Dice, ...); ``on_step`` the number of
    steps done after each optimizer step (tests interrupt training from it). ``track`` records the training as a
    ``kind="train"`` run row in the database.
    """
    setup = prepare(config, settings, track=track)
    if is_sam2(config.model):
        from pixelperfect.training.sam2_finetune import Sam2Trainer

        metrics = Sam2Trainer(setup, on_progress, on_step).run()
        out = setup.out_store.url_for(CONFIG).rsplit("/", 1)[0]
        return TrainResult(setup.run_name, setup.run_id, out, metrics["best_checkpoint"], metrics)
    return _Trainer(setup, on_progress, on_step).run()


class _Trainer:
    def __init__(
        self,
        setup: TrainSetup,
        on_progress: Callable[[dict[str, Any]], None] | None,
        on_step: Callable[[int], None] | None,
    ) -> None:
        self.s, self.config, self.settings = setup, setup.config, setup.settings
        self.on_progress, self.on_step = on_progress, on_step
        self.ckpts = CheckpointStore(setup.out_store)
        self.device = resolve_device(self.settings.device)
        torch.manual_seed(self.config.seed)
        self.sam: Any = load_sam(self.config.model, setup.base_bytes)
        self.seg = SamSegmenter(
            self.sam,
            self.device,
            name=self.config.model,
            encoder_batch=self.settings.encoder_batch,
            precision=self.settings.precision,
        )
        self.sam.requires_grad_(False)
        self.sam.mask_decoder.requires_grad_(True)
        self.sam.image_encoder.requires_grad_(self.config.train_encoder)
        self.cache: EmbeddingCache | None = None
        if not self.config.train_encoder:
            self.cache = EmbeddingCache(
                setup.cache_store,
                checkpoint_hash=setup.base_hash,
                variant_hash=setup.variant.spec_hash,
                precision="bf16" if self.seg.bf16 else "fp32",
                memory_bytes=self.config.cache_memory_mb * 2**20,
            )
        self.progress: dict[str, Any] = {"phase": "loading"}
        self._last_progress = 0.0
        self.encoded = 0
        self.warmup_cache: dict[str, int] = {}

    # --- progress ------------------------------------------------------------------------------------------

    def report(self, force: bool = False, **values: Any) -> None:
        self.progress.update(values, updated_at=time.time())
        if not force and time.monotonic() - self._last_progress < PROGRESS_INTERVAL_S:
            return
        self._last_progress = time.monotonic()
        self.s.save_progress(self.progress)
        if self.on_progress:
            self.on_progress(dict(self.progress))

    # --- data ----------------------------------------------------------------------------------------------

    def load(self) -> tuple[list[TrainImage], list[TrainImage]]:
        plan, skipped = self.s.plan, self.s.skipped
        n_specs = len(plan.train) + len(plan.val)
        loaded: list[list[TrainImage]] = [[], []]
        before = self.cache.stats.copy() if self.cache else CacheStats()
        for side, specs in enumerate((plan.train, plan.val)):
            pending: list[TrainImage] = []
            args = (self.config, self.settings, self.s.variant, self.seg.img_size)
            for img in load_images(specs, *args, keep_full=side == 1, skipped=skipped):
                loaded[side].append(img)
                if self.cache is not None:
                    if self.cache.get(img.sha256) is None:
                        pending.append(img)
                    else:
                        img.pixels = None
                    if len(pending) >= self.settings.encoder_batch:
                        self._encode(pending)
                        pending = []
                done = len(loaded[0]) + len(loaded[1]) + len(skipped)
                self.report(phase="encoding", images_loaded=done, images=n_specs, encoded=self.encoded)
            self._encode(pending)
        self.warmup_cache = self.cache.stats.minus(before) if self.cache else {}
        train, val = loaded
        if not train or not val:
            raise TrainError(
                f"after loading, {len(train)} training and {len(val)} validation images have prompts "
                f"(skipped: {describe(skipped)}); both need at least one"
            )
        return train, val

    def _encode(self, images: list[TrainImage]) -> None:
        if not images or self.cache is None:
            return
        pixels = [img.pixels for img in images if img.pixels is not None]
        embeddings = self.seg.encode(pixels)
        for img, emb in zip(images, embeddings, strict=True):
            self.cache.put(img.sha256, CachedEmbedding(emb.features, emb.original_size, emb.input_size))
            img.pixels = None
            self.encoded += 1

    # --- model ---------------------------------------------------------------------------------------------

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        return self.seg.autocast()

    def features(self, img: TrainImage) -> tuple[torch.Tensor, tuple[int, int]]:
        """``((1, C, h, w) float32 on the device, input size)``; with grad only when the encoder is trained."""
        if self.cache is None:
            if img.pixels is None:  # pragma: no cover - pixels are kept whenever the encoder is trained
                raise RuntimeError(f"{img.key}: pixels were dropped although the encoder is trained")
            rgb = np.repeat(img.pixels[:, :, None], 3, axis=2)
            resized = self.seg.transform.apply_image(rgb)
            x = torch.from_numpy(resized).permute(2, 0, 1).contiguous().to(self.device)
            with self._autocast():
                feats = self.sam.image_encoder(self.sam.preprocess(x[None].float()))
            return feats.float(), (resized.shape[0], resized.shape[1])
        emb = self.cache.get(img.sha256)
        if emb is None:
            raise TrainError(f"the cached embedding of {img.key} vanished from {self.cache.store.url} during training")
        return emb.features.to(self.device, torch.float32)[None], emb.input_size

    def step(self, batch: Sequence[TrainImage], rng: np.random.Generator) -> float:
        self.sam.train()
        self.optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for img in batch:
            n, most = len(img.boxes), self.config.max_prompts
            idx = np.arange(n) if n <= most else np.sort(rng.choice(n, most, replace=False))
            boxes = jitter_boxes(img.boxes[idx], self.config.box_shift, rng, img.original_size)
            feats, _ = self.features(img)
            box_t = self.seg.transform.apply_boxes_torch(
                torch.as_tensor(boxes, dtype=torch.float32, device=self.device), img.original_size
            )
            with torch.no_grad():
                sparse, dense = self.sam.prompt_encoder(points=None, boxes=box_t, masks=None)
            with self._autocast():
                low_res, iou_pred = self.sam.mask_decoder(
                    image_embeddings=feats,
                    image_pe=self.sam.prompt_encoder.get_dense_pe(),
                    sparse_prompt_embeddings=sparse,
                    dense_prompt_embeddings=dense,
                    multimask_output=True,
                )
            lh, lw = img.low_res.shape[1:]
            target = torch.from_numpy(img.low_res[idx]).to(self.device)
            loss = sam_loss(low_res.float()[..., :lh, :lw], iou_pred.float(), target, self.config.iou_loss_weight)
            (loss / len(batch)).backward()  # per image: one image's graph in memory at a time
            total += float(loss.detach()) / len(batch)
        self.optimizer.step()
        return total

    @torch.no_grad()
    def validate(self, images: Sequence[TrainImage]) -> float:
        """Mean Dice over every validation box, decoded exactly as the pipeline decodes (best predicted IoU)."""
        self.sam.eval()
        scores: list[float] = []
        for img in images:
            feats, input_size = self.features(img)
            prediction = self.seg.predict_boxes(SamEmbedding(feats[0], img.original_size, input_size), img.boxes)
            assert img.full is not None  # validation images keep full-resolution targets
            scores.extend(dice(prediction.masks[p], img.full[p]) for p in range(len(img.boxes)))
        return float(np.mean(scores))

    # --- loop ----------------------------------------------------------------------------------------------

    def run(self) -> TrainResult:
        started = time.monotonic()
        try:
            train_imgs, val_imgs = self.load()
            self.s.write_config(self.sam, train_imgs, val_imgs)
            metrics = self.fit(train_imgs, val_imgs, started)
        except BaseException as exc:
            self.report(force=True, phase="failed", error=f"{type(exc).__name__}: {exc}")
            self.s.finish(error=f"{type(exc).__name__}: {exc}")
            raise
        self.report(force=True, phase="done")
        self.s.finish(error=None)
        return TrainResult(
            self.s.run_name, self.s.run_id, self.ckpts.url(CONFIG).rsplit("/", 1)[0], self.ckpts.url(BEST), metrics
        )

    def fit(self, train_imgs: list[TrainImage], val_imgs: list[TrainImage], started: float) -> dict[str, Any]:
        """Train until the step budget is spent or ``patience`` validations bring no better Dice."""
        cfg = self.config
        params = [p for p in self.sam.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        plan = Schedule.of(cfg, len(train_imgs))
        st = self._start(plan)
        st["val_every"] = plan.val_every
        session_start = time.monotonic() - float(st["seconds"])
        if st["before"] is None:
            st["before"] = st["best"] = self.validate(val_imgs)
            self.ckpts.save_best(model_bytes(cfg.model, self.sam), {"step": 0, "epoch": 0, "val_dice": st["best"]})
        before = {"val_dice_before": st["before"], "best_val_dice": st["best"], "resumed_from": st["resumed_from"]}
        self.report(force=True, phase="training", step=st["step"], total_steps=plan.total, **before)
        self._since = self.cache.stats.copy() if self.cache else CacheStats()
        while st["step"] < plan.total and not st["stopped"]:
            step = self._train_step(st, train_imgs, plan)
            if plan.validates(step):
                self._validation(st, val_imgs, plan, session_start)
            if step % cfg.checkpoint_every == 0 or step == plan.total or st["stopped"]:
                st["seconds"] = time.monotonic() - session_start
                state = {**st, "optimizer": self.optimizer.state_dict(), "identity_hash": cfg.identity_hash()}
                self.ckpts.save_step(step, model_bytes(cfg.model, self.sam), state)
            self.report(step=step, loss=st["losses"][-1] if st["losses"] else st["curve"][-1]["train_loss"])
        st["seconds"] = time.monotonic() - session_start
        metrics = self.metrics(st, plan.total)
        metrics["wall_seconds"] = round(time.monotonic() - started, 3)
        self.ckpts.write_json(METRICS, metrics)
        return metrics

    def _start(self, plan: Schedule) -> dict[str, Any]:
        """The loop's state: fresh, or the last step checkpoint's when resuming (weights and optimizer loaded)."""
        st: dict[str, Any] = {"step": 0, "best": -1.0, "best_step": 0, "since_best": 0, "curve": [], "losses": [],
                              "before": None, "stopped": False, "seconds": 0.0, "resumed_from": None}  # fmt: skip
        last = self.ckpts.load_last() if self.config.resume else None
        if last is not None:
            step, weights, saved = last
            self.sam.load_state_dict(state_dict_of(weights))
            self.optimizer.load_state_dict(saved["optimizer"])
            st.update({k: saved[k] for k in st if k in saved}, resumed_from=step)
            st["stopped"] = st["since_best"] >= self.config.patience and step < plan.total  # --patience may change
        return st

    def _train_step(self, st: dict[str, Any], train_imgs: list[TrainImage], plan: Schedule) -> int:
        """One optimizer step on the step's batch (the epoch's seeded order); returns the steps done."""
        cfg, step = self.config, int(st["step"])
        epoch, pos = divmod(step, plan.per_epoch)
        order = np.random.default_rng([cfg.seed, epoch, 0xE0C]).permutation(len(train_imgs))
        batch = [train_imgs[i] for i in order[pos * cfg.batch_size : (pos + 1) * cfg.batch_size]]
        st["losses"].append(self.step(batch, np.random.default_rng([cfg.seed, step, 0x57E9])))
        st["step"] = step + 1
        if self.on_step:
            self.on_step(step + 1)
        return step + 1

    def _validation(self, st: dict[str, Any], val_imgs: list[TrainImage], plan: Schedule, session_start: float) -> None:
        """Validate, extend the curve, keep the best weights, count towards early stopping, write metrics.json."""
        cfg, step = self.config, int(st["step"])
        epoch = plan.epoch_of(step)
        cache = self.cache.stats.minus(self._since) if self.cache else {}
        val = self.validate(val_imgs)
        seconds = round(time.monotonic() - session_start, 3)
        st["curve"].append({"epoch": epoch, "step": step, "train_loss": float(np.mean(st["losses"])),
                            "val_dice": val, "cache": cache, "seconds": seconds})  # fmt: skip
        st["losses"] = []
        if val > st["best"]:
            st.update(best=val, best_step=step, since_best=0)
            self.ckpts.save_best(model_bytes(cfg.model, self.sam), {"step": step, "epoch": epoch, "val_dice": val})
        else:
            st["since_best"] += 1
        st["stopped"] = st["since_best"] >= cfg.patience and step < plan.total
        st["seconds"] = time.monotonic() - session_start
        self.ckpts.write_json(METRICS, self.metrics(st, plan.total))
        self.report(force=True, step=step, epoch=epoch, val_dice=val, best_val_dice=st["best"])
        self._since = self.cache.stats.copy() if self.cache else CacheStats()

    def metrics(self, st: dict[str, Any], total: int) -> dict[str, Any]:
        curve = st["curve"]
        return {
            "val_dice_before": st["before"],
            "val_dice_after": st["best"],
            "val_dice_final": curve[-1]["val_dice"] if curve else st["before"],
            "best_step": st["best_step"],
            "best_checkpoint": self.ckpts.url(BEST),
            "last_checkpoint": self.ckpts.url(LAST),
            "steps": st["step"],
            "total_steps": total,
            "epochs": len(curve),
            "stopped_early": bool(st["stopped"]),
            "resumed_from_step": st["resumed_from"],
            "train_seconds": round(float(st["seconds"]), 3),
            "curve": curve,
            "cache": {"warmup": self.warmup_cache, "encoded_this_session": self.encoded},
            "pseudo_labels": self.config.pseudo_labels,
            "run": self.s.run_name,
            "lr": self.config.learning_rate,
            "val_every": st.get("val_every"),
            "warning": no_improvement_warning(st, self.config),
        }
