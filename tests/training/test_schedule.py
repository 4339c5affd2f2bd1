"""Training that says what happened: per-model defaults that learn, validation every ``val_every`` steps with
``patience`` counting validations, and a plain warning (printed and in metrics.json) when the Dice did not move."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pixelperfect.config import use_settings
from pixelperfect.training.finetune import train
from pixelperfect.training.recipe import TrainConfig
from pixelperfect.training.schedule import MIN_VAL_STEPS, Schedule, no_improvement_warning
from tests.training.conftest import train_settings


def _config(model: str = "sam_tiny", **values: object) -> TrainConfig:
    return TrainConfig(source="s", out="o", gt_masks="m", model=model, **values)  # type: ignore[arg-type]


def test_per_model_defaults_and_schedule() -> None:
    tiny, vit = _config(), _config("sam_vit_b")
    assert (tiny.lr, tiny.epochs) == (1e-3, 50)  # the random sam_tiny learns at the demo's rate
    assert (vit.lr, vit.epochs) == (1e-4, 10)  # pretrained SAM keeps MedSAM's recipe
    assert _config(lr=5e-4, epochs=3).as_dict()["lr"] == 5e-4
    assert _config().identity_hash() == _config(lr=1e-3).identity_hash()  # the resolved default is what is hashed
    with pytest.raises(ValueError, match="val_every"):
        _config(val_every=0)
    # 16 training images, batch 4: 4 steps an epoch; by default validate every whole epochs, >= 20 steps
    plan = Schedule.of(_config(max_steps=30), 16)
    assert (plan.per_epoch, plan.total, plan.val_every) == (4, 30, 20) and MIN_VAL_STEPS == 20
    assert [s for s in range(1, 31) if plan.validates(s)] == [20, 30] and plan.epoch_of(20) == 5
    assert Schedule.of(_config(val_every=3), 400).val_every == 3  # given: as given
    assert Schedule.of(_config(), 400).val_every == 100  # a large set: one epoch


def test_warning_says_what_happened_and_what_to_try() -> None:
    cfg = _config(lr=1e-5, patience=2)
    flat = {"curve": [{}, {}], "before": 0.08, "best": 0.085, "step": 40, "stopped": True, "val_every": 20}
    text = no_improvement_warning(flat, cfg)
    assert text is not None and "did not improve" in text and "0.080" in text and "stopped early" in text
    assert "--lr" in text and "lr 1e-05" in text and "--patience" in text
    assert no_improvement_warning({**flat, "best": 0.3}, cfg) is None
    assert no_improvement_warning({**flat, "curve": []}, cfg) is None  # nothing validated yet


@pytest.mark.slow
def test_defaults_learn_on_24_phantoms(train_phantoms: Path, tmp_path: Path) -> None:
    """As a new user: 24 phantoms, ``--model sam_tiny``, nothing else (random weights, all defaults)."""
    config = TrainConfig(source=str(train_phantoms / "images"), gt_masks=str(train_phantoms / "masks"),
                         out=str(tmp_path / "out"), model="sam_tiny")  # fmt: skip
    m = train(config, train_settings(tmp_path), track=False).metrics
    print(f"\nval Dice {m['val_dice_before']:.3f} -> {m['val_dice_after']:.3f} in {m['steps']} steps")
    assert m["val_dice_after"] >= m["val_dice_before"] + 0.3
    assert m["warning"] is None and not m["stopped_early"] and m["lr"] == 1e-3
    assert all(c["step"] % m["val_every"] == 0 or c["step"] == m["steps"] for c in m["curve"])


@pytest.mark.slow
def test_a_training_that_does_not_learn_says_so(
    train_phantoms: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pixelperfect.cli import app

    monkeypatch.setenv("PIXELPERFECT_DATABASE_URL", f"sqlite:///{tmp_path / 'pp.db'}")
    monkeypatch.setenv("PIXELPERFECT_STORE_URL", f"file://{tmp_path / 'store'}")
    monkeypatch.setenv("PIXELPERFECT_DEVICE", "cpu")
    use_settings(None)
    args = ["train", str(train_phantoms / "images"), "--gt-masks", str(train_phantoms / "masks"), "--model",
            "sam_tiny", "--out", str(tmp_path / "out"), "--lr", "1e-7", "--max-steps", "12", "--val-every", "4",
            "--patience", "2"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["warning"] and "did not improve" in metrics["warning"] and metrics["stopped_early"]
    assert [c["step"] for c in metrics["curve"]] == [4, 8] and metrics["steps"] == 8  # patience: 2 validations
    assert "warning: validation Dice did not improve" in " ".join(result.output.split())
