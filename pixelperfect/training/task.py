"""The body of the ``pixelperfect.train`` Celery task (the task in :mod:`pixelperfect.worker.tasks` is a shell).

One task is one whole training. Progress reaches Flower as ``task-progress`` events (Celery's documented way to
add custom event types for monitors) and, where a result backend is configured, as the task's ``PROGRESS``
state; ``pixelperfect status RUN`` reads the run row the training keeps up to date.
"""

from __future__ import annotations

import logging
from typing import Any

from pixelperfect.config import get_settings
from pixelperfect.training.recipe import TrainConfig

log = logging.getLogger(__name__)

PROGRESS_EVENT = "task-progress"


def run_training_task(task: Any, config: dict[str, Any]) -> dict[str, Any]:
    """Train per ``config`` (a :meth:`TrainConfig.as_dict`); returns the headline numbers (JSON)."""
    from pixelperfect.training.finetune import train

    cfg = TrainConfig.from_dict(config)

    def progress(info: dict[str, Any]) -> None:
        try:
            task.update_state(state="PROGRESS", meta=info)  # a no-op without a result backend
            task.send_event(PROGRESS_EVENT, **info)
        except Exception as exc:  # monitoring must never stop a training
            log.warning("could not publish training progress: %s", exc)

    result = train(cfg, get_settings(), on_progress=progress)
    m = result.metrics
    return {
        "run": result.run,
        "out": result.out_url,
        "best_checkpoint": result.best_url,
        "val_dice_before": m["val_dice_before"],
        "val_dice_after": m["val_dice_after"],
        "steps": m["steps"],
        "train_seconds": m["train_seconds"],
    }
