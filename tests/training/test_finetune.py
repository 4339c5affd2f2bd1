"""Training on phantom X-rays with sam_tiny on the CPU: Dice rises, the cache is used, checkpoints load anywhere."""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from sqlalchemy import func, select

from pixelperfect.config import Settings, use_settings
from pixelperfect.db.models import Image, Run, Segment
from pixelperfect.db.session import session_scope
from pixelperfect.pipeline.decode.reader import decode_image
from pixelperfect.pipeline.model.sam import SamSegmenter
from pixelperfect.pipeline.model.weights import load_sam
from pixelperfect.pipeline.score.overlap import dice
from pixelperfect.training.data import component_prompts
from pixelperfect.training.finetune import TrainResult, train
from pixelperfect.training.recipe import TrainConfig
from pixelperfect.training.setup import TrainError
from tests.training.conftest import train_settings

pytestmark = pytest.mark.slow

#: The decoder of a *random* tiny SAM learns from scratch here; MedSAM's 1e-4 is for fine-tuning pretrained
#: weights and needs far more steps to leave the "predict nothing" plateau.
TEST_LR = 1e-3
STEPS = 200


def _config(phantoms: Path, checkpoint: Path, out: Path, **overrides: Any) -> TrainConfig:
    values: dict[str, Any] = {
        "source": str(phantoms / "images"),
        "gt_masks": str(phantoms / "masks"),
        "out": str(out),
        "model": "sam_tiny",
        "checkpoint": str(checkpoint),
        "lr": TEST_LR,
        "epochs": 1000,
        "patience": 1000,
        "checkpoint_every": 50,
    }
    return TrainConfig(**{**values, **overrides})


@dataclass
class Trained:
    root: Path
    settings: Settings
    config: TrainConfig
    result: TrainResult
    wall_s: float


@pytest.fixture(scope="module")
def trained(train_phantoms: Path, tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Trained:
    root = tmp_path_factory.mktemp("trained")
    settings = train_settings(root)
    config = _config(train_phantoms, tiny_checkpoint, root / "out", max_steps=STEPS)
    started = time.monotonic()
    result = train(config, settings)
    return Trained(root, settings, config, result, time.monotonic() - started)


def test_short_training_raises_validation_dice(trained: Trained) -> None:
    m = trained.result.metrics
    print(
        f"\nval Dice {m['val_dice_before']:.3f} -> {m['val_dice_after']:.3f} (best step {m['best_step']}, final "
        f"{m['val_dice_final']:.3f}), {m['steps']} steps, {m['train_seconds']:.1f}s training, {trained.wall_s:.1f}s"
    )
    assert m["steps"] == STEPS
    assert m["val_dice_after"] >= m["val_dice_before"] + 0.2
    assert trained.wall_s <= 90
    on_disk = json.loads((trained.root / "out" / "metrics.json").read_text())
    assert on_disk["val_dice_before"] == m["val_dice_before"] and on_disk["val_dice_after"] == m["val_dice_after"]
    epochs = [e["epoch"] for e in on_disk["curve"]]  # validation every whole number of epochs (>= 20 steps)
    assert epochs == sorted(set(epochs)) and on_disk["val_every"] % (STEPS // epochs[-1]) == 0
    assert on_disk["curve"][-1]["step"] == STEPS
    best = json.loads((trained.root / "out" / "best.json").read_text())
    assert best["step"] == m["best_step"] and best["val_dice"] == m["val_dice_after"]


def test_every_epoch_after_the_first_pass_reads_embeddings_from_the_cache(trained: Trained) -> None:
    cfg = json.loads((trained.root / "out" / "config.json").read_text())
    n_train, n_val = cfg["data"]["train_images"], cfg["data"]["val_images"]
    m = trained.result.metrics
    assert m["cache"]["warmup"]["misses"] == n_train + n_val  # each image encoded once ...
    assert m["cache"]["encoded_this_session"] == n_train + n_val
    # ... and every later epoch reads every training embedding from the cache
    for prev, epoch in zip(m["curve"][:-1], m["curve"][1:], strict=True):
        assert epoch["cache"]["hits"] == n_train * (epoch["epoch"] - prev["epoch"]) and epoch["cache"]["misses"] == 0
    cached = list((trained.root / "store" / "cache" / "embeddings").rglob("*.pt"))
    assert len(cached) == n_train + n_val


def test_a_second_training_encodes_nothing(trained: Trained) -> None:
    config = replace(trained.config, out=str(trained.root / "out-again"), max_steps=2, seed=0)
    again = train(config, trained.settings, track=False)
    warm = again.metrics["cache"]["warmup"]
    assert again.metrics["cache"]["encoded_this_session"] == 0
    assert warm["misses"] == 0 and warm["store_hits"] == warm["hits"] > 0


def test_config_beside_the_checkpoints_says_everything(trained: Trained) -> None:
    cfg = json.loads((trained.root / "out" / "config.json").read_text())
    assert cfg["config"]["lr"] == TEST_LR and cfg["config"]["max_steps"] == STEPS
    assert cfg["pseudo_labels"] is False and cfg["targets"]["kind"] == "ground-truth masks"
    assert cfg["variant"]["name"] == "raw" and len(cfg["variant"]["hash"]) == 16
    assert cfg["model"]["trainable"] == ["mask_decoder"]
    assert set(cfg["model"]["frozen"]) == {"image_encoder", "prompt_encoder"}
    assert len(cfg["model"]["base_checkpoint_sha256"]) == 64 and cfg["code_version"]
    assert set(cfg["data"]["train_keys"]).isdisjoint(cfg["data"]["val_keys"])
    state = torch.load(trained.root / "out" / "checkpoints" / "slot-a.state.pt", weights_only=True)
    assert "optimizer" in state and state["step"] in (150, 200)


def test_only_the_mask_decoder_changed(trained: Trained, tiny_checkpoint: Path) -> None:
    base = load_sam("sam_tiny", tiny_checkpoint.read_bytes()).state_dict()
    tuned = load_sam("sam_tiny", (trained.root / "out" / "best.pth").read_bytes()).state_dict()
    assert base.keys() == tuned.keys()
    changed = {k.split(".")[0] for k in base if not torch.equal(base[k], tuned[k])}
    assert changed == {"mask_decoder"}


def test_best_checkpoint_reproduces_its_validation_dice(trained: Trained) -> None:
    """Load best.pth like any checkpoint and score the validation boxes through the pipeline's predictor."""
    cfg = json.loads((trained.root / "out" / "config.json").read_text())
    sam = load_sam("sam_tiny", (trained.root / "out" / "best.pth").read_bytes())
    seg = SamSegmenter(sam, torch.device("cpu"), name="sam_tiny")
    images = Path(cfg["config"]["source"].removeprefix("file://"))
    masks = Path(cfg["config"]["gt_masks"].removeprefix("file://"))
    scores = []
    for key in cfg["data"]["val_keys"]:
        pixels = decode_image((images / key).read_bytes(), key).pixels
        gt = decode_image((masks / key).read_bytes(), key).pixels > 0
        boxes, targets = component_prompts(gt, cfg["config"]["min_area"])
        prediction = seg.predict_boxes(seg.encode([pixels])[0], boxes)
        scores += [dice(prediction.masks[p], targets[p]) for p in range(len(boxes))]
    # the trainer scored fp16-cached embeddings, this scores fresh fp32 ones: equal to rounding
    assert float(np.mean(scores)) == pytest.approx(trained.result.metrics["val_dice_after"], abs=0.02)


def test_training_is_a_tracked_run(trained: Trained) -> None:
    with session_scope(trained.settings.database_url) as session:
        run = session.scalars(select(Run)).one()
        assert run.kind == "train" and run.name == trained.result.run
        assert run.settings["progress"]["phase"] == "done"
        assert run.settings["progress"]["best_val_dice"] == trained.result.metrics["val_dice_after"]
        assert run.settings["training"]["lr"] == TEST_LR
        statuses = dict(session.execute(select(Image.status, func.count()).group_by(Image.status)).all())
    cfg = json.loads((trained.root / "out" / "config.json").read_text())
    assert statuses == {"done": cfg["data"]["train_images"] + cfg["data"]["val_images"]}


def test_out_refuses_a_second_training_without_resume(trained: Trained) -> None:
    with pytest.raises(TrainError, match="--resume"):
        train(trained.config, trained.settings)
    with pytest.raises(TrainError, match="another training"):
        train(replace(trained.config, lr=2e-3), trained.settings)


def test_tuned_checkpoint_evaluated_as_an_ordinary_run(
    trained: Trained, train_phantoms: Path, tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``submit --checkpoint OUT/best.pth`` (here through PIXELPERFECT_CHECKPOINT) beats the base weights."""
    from pixelperfect.embedded import SubmitRequest, submit

    cfg = json.loads((trained.root / "out" / "config.json").read_text())
    val_keys = cfg["data"]["val_keys"]
    common = {"database_url": f"sqlite:///{trained.root / 'eval.db'}", "store_url": f"file://{trained.root / 'es'}"}
    dices = {}
    for name, checkpoint in (("base", tiny_checkpoint), ("tuned", trained.root / "out" / "best.pth")):
        monkeypatch.setenv("PIXELPERFECT_CHECKPOINT", str(checkpoint))
        settings = Settings(model="sam_tiny", device="cpu", **common)
        assert settings.checkpoint == str(checkpoint)
        use_settings(settings)  # the embedded runner reads the process-wide settings
        req = SubmitRequest(
            source=str(train_phantoms / "images"),
            run=name,
            variants=["raw"],
            annotations=str(train_phantoms / "labels.csv"),
            gt_masks=str(train_phantoms / "masks"),
        )
        submit(req, settings)
        with session_scope(settings.database_url) as session:
            run = session.scalars(select(Run).where(Run.name == name)).one()
            rows = session.execute(
                select(Segment.dice).join(Image).where(Segment.run_id == run.id, Image.key.in_(val_keys))
            ).all()
            dices[name] = float(np.mean([r[0] for r in rows]))
    print(f"\npipeline Dice on the validation images: base {dices['base']:.3f}, tuned {dices['tuned']:.3f}")
    assert dices["tuned"] >= dices["base"] + 0.2


def test_interrupted_training_resumes_at_the_saved_step(
    train_phantoms: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    settings = train_settings(tmp_path)
    config = _config(train_phantoms, tiny_checkpoint, tmp_path / "out", max_steps=12, checkpoint_every=5)

    def interrupt(step: int) -> None:
        if step == 8:
            raise KeyboardInterrupt("simulated crash at step 8")

    with pytest.raises(KeyboardInterrupt):
        train(config, settings, on_step=interrupt)
    assert json.loads((tmp_path / "out" / "last.json").read_text())["step"] == 5
    with session_scope(settings.database_url) as session:
        assert session.scalars(select(Run)).one().settings["progress"]["phase"] == "failed"

    steps_seen: list[int] = []
    resumed = train(replace(config, resume=True), settings, on_step=steps_seen.append)
    assert resumed.metrics["resumed_from_step"] == 5 and steps_seen[0] == 6
    assert resumed.metrics["steps"] == 12

    reference = train(replace(config, out=str(tmp_path / "ref")), settings, track=False)
    assert [e["val_dice"] for e in resumed.metrics["curve"]] == [e["val_dice"] for e in reference.metrics["curve"]]
    got, want = _weights(tmp_path / "out"), _weights(tmp_path / "ref")
    assert all(torch.allclose(got[k], want[k], atol=1e-6) for k in want)  # as if never interrupted

    nothing_left = train(replace(config, resume=True), settings)
    assert nothing_left.metrics["steps"] == 12 and nothing_left.metrics["resumed_from_step"] == 12


def _weights(out: Path) -> dict[str, torch.Tensor]:
    last = json.loads((out / "last.json").read_text())
    payload = torch.load(io.BytesIO((out / last["model"]).read_bytes()), weights_only=True)
    return payload["model"]  # type: ignore[no-any-return]


def test_train_encoder_updates_the_encoder_and_bypasses_the_cache(
    train_phantoms: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    settings = train_settings(tmp_path)
    config = _config(train_phantoms, tiny_checkpoint, tmp_path / "out", max_steps=2, train_encoder=True)
    result = train(config, settings, track=False)
    assert result.metrics["cache"]["encoded_this_session"] == 0
    assert not (tmp_path / "store" / "cache").exists()
    base = load_sam("sam_tiny", tiny_checkpoint.read_bytes()).state_dict()
    last = json.loads((tmp_path / "out" / "last.json").read_text())
    tuned = load_sam("sam_tiny", (tmp_path / "out" / last["model"]).read_bytes()).state_dict()
    changed = {k.split(".")[0] for k in base if not torch.equal(base[k], tuned[k])}
    assert changed == {"image_encoder", "mask_decoder"}


def test_vit_b_checkpoint_loads_through_segment_anythings_builder(tmp_path: Path) -> None:
    from segment_anything import sam_model_registry

    from pixelperfect.training.checkpoints import model_bytes

    torch.manual_seed(0)
    sam = sam_model_registry["vit_b"](checkpoint=None)
    with torch.no_grad():
        sam.mask_decoder.iou_prediction_head.layers[0].weight.add_(1.0)  # a "fine-tuned" change to find again
    path = tmp_path / "best.pth"
    path.write_bytes(model_bytes("sam_vit_b", sam))
    rebuilt = sam_model_registry["vit_b"](checkpoint=str(path))
    want = sam.state_dict()
    assert rebuilt.state_dict().keys() == want.keys()
    assert all(torch.equal(v, want[k]) for k, v in rebuilt.state_dict().items())
    via_ours = load_sam("medsam", path.read_bytes())
    assert torch.equal(
        via_ours.mask_decoder.iou_prediction_head.layers[0].weight,
        want["mask_decoder.iou_prediction_head.layers.0.weight"],
    )


@pytest.mark.gpu
def test_bf16_training_on_cuda(train_phantoms: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    settings = train_settings(tmp_path).model_copy(update={"device": "cuda"})
    config = _config(train_phantoms, tiny_checkpoint, tmp_path / "out", max_steps=STEPS)
    result = train(config, settings, track=False)
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["recipe"]["precision"] == "bf16 autocast"
    assert list((tmp_path / "store" / "cache" / "embeddings").glob("*/*/bf16/*.pt"))
    assert result.metrics["val_dice_after"] >= result.metrics["val_dice_before"] + 0.2
