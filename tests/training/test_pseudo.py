"""Pseudo-labels from an earlier run, and the ``pixelperfect train`` command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from pixelperfect.config import use_settings
from pixelperfect.db.models import Run, Segment
from pixelperfect.db.session import session_scope
from pixelperfect.training.data import TrainingDataError
from pixelperfect.training.finetune import train
from pixelperfect.training.recipe import TrainConfig
from tests.training.conftest import train_settings

pytestmark = pytest.mark.slow


def test_training_on_consistent_masks_of_an_earlier_run(
    train_phantoms: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    from pixelperfect.embedded import SubmitRequest, submit

    settings = train_settings(tmp_path)
    use_settings(settings)
    submit(
        SubmitRequest(
            source=str(train_phantoms / "images"),
            run="boxes-only",
            variants=["raw", "clahe"],
            model="sam_tiny",
            checkpoint=str(tiny_checkpoint),
            annotations=str(train_phantoms / "labels.csv"),
        ),
        settings,
    )
    with session_scope(settings.database_url) as session:
        values = sorted(v for v in session.scalars(select(Segment.consistency_iou).where(Segment.variant == "raw")))
        threshold = values[len(values) // 3]
        kept = session.scalar(
            select(func.count())
            .select_from(Segment)
            .where(Segment.variant == "raw", Segment.consistency_iou >= threshold)
        )
    config = TrainConfig(
        source=str(train_phantoms / "images"),
        out=str(tmp_path / "out"),
        model="sam_tiny",
        checkpoint=str(tiny_checkpoint),
        targets_from_run="boxes-only",
        min_consistency_iou=threshold,
        max_steps=3,
        run="pseudo",
    )
    result = train(config, settings)
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["pseudo_labels"] is True and result.metrics["pseudo_labels"] is True
    targets = cfg["targets"]
    assert targets["kind"] == "pseudo-labels" and targets["run"] == "boxes-only" and targets["variant"] == "raw"
    assert targets["segments_kept"] == kept < targets["segments_total"] == len(values)
    assert cfg["data"]["train_prompts"] + cfg["data"]["val_prompts"] == kept
    with session_scope(settings.database_url) as session:
        run = session.scalars(select(Run).where(Run.name == "pseudo")).one()
        assert run.kind == "train" and run.settings["training"]["targets_from_run"] == "boxes-only"

    strict = TrainConfig(**{**config.as_dict(), "min_consistency_iou": 1.0, "out": str(tmp_path / "o2"), "run": "x"})
    assert values[-1] < 1.0  # so that no segment passes the strict threshold
    with pytest.raises(TrainingDataError, match="no 'raw' segment"):
        train(strict, settings)
    with pytest.raises(TrainingDataError, match="no run named"):
        train(TrainConfig(**{**config.as_dict(), "targets_from_run": "nope", "out": str(tmp_path / "o3")}), settings)


def test_train_command_prints_dice_and_refuses_a_rerun(
    train_phantoms: Path, tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pixelperfect.cli import app

    monkeypatch.setenv("PIXELPERFECT_DATABASE_URL", f"sqlite:///{tmp_path / 'pp.db'}")
    monkeypatch.setenv("PIXELPERFECT_STORE_URL", f"file://{tmp_path / 'store'}")
    monkeypatch.setenv("PIXELPERFECT_DEVICE", "cpu")
    monkeypatch.setenv("PIXELPERFECT_CHECKPOINT", str(tiny_checkpoint))
    use_settings(None)
    args = [
        "train",
        str(train_phantoms / "images"),
        "--gt-masks",
        str(train_phantoms / "masks"),
        "--model",
        "sam_tiny",
        "--out",
        str(tmp_path / "out"),
        "--max-steps",
        "4",
        "--checkpoint-every",
        "2",
        "--variant",
        "clahe",
    ]
    runner = CliRunner()
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert f"val_dice_before {metrics['val_dice_before']:.4f}" in first.output
    assert f"val_dice_after {metrics['val_dice_after']:.4f}" in first.output
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["config"]["checkpoint"] == f"file://{tiny_checkpoint}"  # from PIXELPERFECT_CHECKPOINT
    assert cfg["variant"]["name"] == "clahe"

    again = runner.invoke(app, args)
    assert again.exit_code == 2 and "--resume" in again.output
    resumed = runner.invoke(app, [*args, "--resume", "--max-steps", "6"])
    assert resumed.exit_code == 0, resumed.output
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["resumed_from_step"] == 4
    no_targets = runner.invoke(app, ["train", str(train_phantoms / "images"), "--out", str(tmp_path / "o3")])
    assert no_targets.exit_code == 2 and "needs targets" in no_targets.output
    queued = runner.invoke(app, [*args[:-4], "--out", str(tmp_path / "o4"), "--queue"])
    assert queued.exit_code == 2 and "PIXELPERFECT_BROKER_URL" in queued.output
