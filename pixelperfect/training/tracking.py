"""A training as a run row (``kind="train"``), so ``pixelperfect status`` and the database see it like any run.

Migration-free: the run row uses the existing columns (source, out URL as ``store_url``, model, base checkpoint
and its sha256, the variant) and keeps the full training config under ``settings["training"]``, the data summary
under ``settings["data"]`` and the live progress (phase, step, epoch, loss, validation Dice, best Dice) under
``settings["progress"]``, updated while it trains. Each training and validation image gets an image row: queued
while the training runs, ``done`` when it finished (``meta.split`` says train or val), ``failed`` with a reason
when the image could not be used or the training failed. ``status RUN`` therefore reads "queued" until the
training is over, exactly as for a segmentation run, and ``status --watch`` waits for it.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import update

from pixelperfect.config import Settings
from pixelperfect.db import repo
from pixelperfect.db.migrate import upgrade
from pixelperfect.db.models import Image, ImageStatus, Run
from pixelperfect.db.session import session_scope
from pixelperfect.inputs.sources import absolute_url
from pixelperfect.pipeline.options import PromptMode
from pixelperfect.training.recipe import TrainConfig
from pixelperfect.version import CODE_VERSION


class TrainingRunError(ValueError):
    """A run name reused for a different training."""


def run_name(config: TrainConfig) -> str:
    return config.run or f"train-{config.identity_hash()[:12]}"


def start_run(
    config: TrainConfig,
    settings: Settings,
    *,
    variant: dict[str, str],
    checkpoint: str | None,
    checkpoint_sha256: str | None,
    keys: dict[str, str],
    gt_masks: dict[str, str],
) -> int:
    """Create (or find, for ``--resume``) the run row and one queued image row per key; returns the run id.

    ``keys``: ``{image key: "train" | "val"}``; ``gt_masks``: ``{image key: mask URL}``.
    """
    upgrade(settings.database_url)
    name = run_name(config)
    digest = config.identity_hash()
    with session_scope(settings.database_url) as session:
        existing = repo.get_run(session, name=name)
        if existing is not None and (existing.kind != "train" or existing.config_hash != digest):
            raise TrainingRunError(
                f"run {name!r} exists with another configuration ({existing.kind}); runs are immutable: "
                "choose a new --run name"
            )
        run = existing or repo.create_run(
            session,
            name=name,
            fields={
                "source_url": absolute_url(config.source),
                "store_url": absolute_url(config.out),
                "model": config.model,
                "checkpoint": checkpoint,
                "checkpoint_sha256": checkpoint_sha256,
                "variants": [variant],
                "prompt_mode": PromptMode.boxes.value,
                "settings": {"training": config.as_dict(), "progress": {"phase": "queued"}},
                "code_version": CODE_VERSION,
                "config_hash": digest,
                "kind": "train",
            },
        )
        if existing is not None:  # a resumed training may have a new schedule (--max-steps, --epochs)
            existing.settings = {**(existing.settings or {}), "training": config.as_dict()}
        run_id = run.id
        repo.add_images(session, run_id=run_id, keys=list(keys), gt_masks=gt_masks)
        # a resumed or extended training: its images are in training again
        session.execute(
            update(Image)
            .where(Image.run_id == run_id, Image.status != ImageStatus.queued.value)
            .values(status=ImageStatus.queued.value, error=None, error_reason=None, finished_at=None)
        )
    return run_id


def update_progress(settings: Settings, run_id: int, progress: dict[str, Any], **extra: Any) -> None:
    """Replace ``settings["progress"]`` (and any ``extra`` top-level settings entries) of the run row."""
    with session_scope(settings.database_url) as session:
        run = session.get(Run, run_id)
        if run is None:
            return
        run.settings = {**(run.settings or {}), **extra, "progress": progress}


def finish_run(
    settings: Settings, run_id: int, *, splits: dict[str, str], skipped: dict[str, str], error: str | None = None
) -> None:
    """Images used -> ``done`` (or ``failed`` with ``training_error``); unusable images -> ``failed`` with reason."""
    with session_scope(settings.database_url) as session:
        rows = repo.images_by_key(session, run_id=run_id, keys=list(splits))
        for key, row in rows.items():
            if key in skipped:
                reason = skipped[key]
                repo.mark_failed(session, image_id=row.id, reason=reason, error=f"not used for training: {reason}")
            elif error is not None:
                repo.mark_failed(session, image_id=row.id, reason="training_error", error=error)
            else:
                repo.mark_done(session, image_id=row.id, segments=[], fields={"meta": {"split": splits[key]}})


def read_progress(settings: Settings, name: str) -> dict[str, Any] | None:
    """The progress record of training run ``name`` (``None`` if there is no such training run)."""
    with session_scope(settings.database_url) as session:
        run = repo.get_run(session, name=name)
        if run is None or run.kind != "train":
            return None
        return dict((run.settings or {}).get("progress") or {})


def describe_progress(progress: dict[str, Any]) -> str:
    """One line for ``status``: ``training: step 120/400, epoch 12, loss 0.4210, val Dice 0.7312 (best 0.7450,
    before 0.0820)``; the phase alone while queued, loading or encoding (with images done)."""
    phase = str(progress.get("phase", "unknown"))
    if phase == "encoding":
        return f"encoding: {progress.get('images_loaded', 0)}/{progress.get('images', '?')} images"
    if phase not in ("training", "done", "failed") or "total_steps" not in progress:
        return phase + (f": {progress['error']}" if progress.get("error") else "")
    parts = [f"{phase}: step {progress.get('step', 0)}/{progress['total_steps']}"]
    if progress.get("epoch"):
        parts.append(f"epoch {progress['epoch']}")
    if progress.get("loss") is not None:
        parts.append(f"loss {progress['loss']:.4f}")
    if progress.get("val_dice") is not None:
        parts.append(f"val Dice {progress['val_dice']:.4f}")
    line = ", ".join(parts)
    best, before = progress.get("best_val_dice"), progress.get("val_dice_before")
    if best is not None and before is not None:
        line += f" (best {best:.4f}, before {before:.4f})"
    return line + (f"; {progress['error']}" if progress.get("error") else "")
