"""Models behind one interface: checkpoint loading (path and s3://), batched encoder, box prompts, GrabCut."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pixelperfect.pipeline.model.builder import build_segmenter
from pixelperfect.pipeline.model.grabcut import GrabCutSegmenter
from pixelperfect.pipeline.model.sam import SamSegmenter
from pixelperfect.pipeline.model.weights import CheckpointError, TinyConfig, build_tiny_sam, load_sam, sha256_hex
from pixelperfect.storage import read_url
from pixelperfect.worker.runtime import CheckpointMismatchError, RunSpec, Runtime
from tests.conftest import S3Server, count_model_loads, embedded_settings


def _image(seed: int = 0, size: int = 192) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = (rng.random((size, size)) * 60).astype(np.uint8)
    img[60:120, 50:130] += 120
    return img


BOXES = np.array([[50, 60, 130, 120], [10, 10, 60, 40]], np.float64)


def _masks(seg: SamSegmenter) -> tuple[np.ndarray, np.ndarray]:
    (emb,) = seg.encode([_image()])
    pred = seg.predict_boxes(emb, BOXES)
    return pred.masks, pred.scores


def test_checkpoint_round_trip_from_path_and_s3(tiny_checkpoint: Path, s3_server: S3Server, s3_bucket: str) -> None:
    data = tiny_checkpoint.read_bytes()
    s3_server.client().put_object(Bucket=s3_bucket, Key="models/tiny.pth", Body=data)
    from_path = load_sam("sam_tiny", read_url(str(tiny_checkpoint)))
    from_s3 = load_sam("sam_tiny", read_url(f"s3://{s3_bucket}/models/tiny.pth", endpoint_url=s3_server.endpoint))
    for a, b in zip(from_path.state_dict().values(), from_s3.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    m1, s1 = _masks(SamSegmenter(from_path, torch.device("cpu"), name="sam_tiny"))
    m2, s2 = _masks(SamSegmenter(from_s3, torch.device("cpu"), name="sam_tiny"))
    assert np.array_equal(m1, m2) and np.array_equal(s1, s2)
    random_init = load_sam("sam_tiny", None)  # the saved weights, not the seeded default, are what loaded
    assert not all(
        torch.equal(a, b)
        for a, b in zip(random_init.state_dict().values(), from_path.state_dict().values(), strict=True)
    )


def test_bare_state_dict_loads_through_the_registry_architecture() -> None:
    import io

    sam = build_tiny_sam(TinyConfig(image_size=128))
    buf = io.BytesIO()
    torch.save({"config": {"image_size": 128}, "model": sam.state_dict()}, buf)
    loaded = load_sam("sam_tiny", buf.getvalue())
    assert loaded.image_encoder.img_size == 128
    with pytest.raises(CheckpointError, match="does not fit the sam_vit_b architecture"):
        load_sam("sam_vit_b", buf.getvalue())
    with pytest.raises(CheckpointError, match="does not load"):
        load_sam("sam_tiny", b"not a checkpoint")


def test_prediction_contract_and_batched_encoder_equals_single() -> None:
    seg = build_segmenter("sam_tiny", None, "cpu", encoder_batch=2)
    images = [_image(i) for i in range(3)]
    batched = seg.encode(images)
    single = [seg.encode([img])[0] for img in images]
    for a, b in zip(batched, single, strict=True):
        assert torch.allclose(a.features, b.features, atol=1e-4)
    pred = seg.predict_boxes(batched[0], BOXES)
    assert pred.masks.shape == (2, 192, 192) and pred.masks.dtype == bool
    assert pred.scores.shape == (2, 3) and pred.chosen.shape == (2,)
    assert np.allclose(pred.best_scores, pred.scores.max(1))
    assert ((pred.stability >= 0) & (pred.stability <= 1)).all()
    empty = seg.predict_boxes(batched[0], np.zeros((0, 4)))
    assert empty.masks.shape == (0, 192, 192)


def test_grabcut_baseline_segments_a_bright_square() -> None:
    img = np.full((128, 128), 30, np.uint8)
    img[40:90, 30:100] = 200
    rng = np.random.default_rng(0)
    img = np.clip(img.astype(int) + rng.integers(-10, 10, img.shape), 0, 255).astype(np.uint8)
    pred = GrabCutSegmenter().predict_boxes(img, np.array([[20.0, 30, 110, 100]]))
    truth = np.zeros_like(pred.masks[0])
    truth[40:90, 30:100] = True
    inter = (pred.masks[0] & truth).sum()
    assert 2 * inter / (pred.masks[0].sum() + truth.sum()) > 0.9
    assert np.isnan(pred.scores).all() and pred.chosen.tolist() == [GrabCutSegmenter.CUT]


def test_grabcut_cuts_opacities_in_their_own_crop() -> None:
    """Phantom opacities: grey levels inside the box also fill the rest of the radiograph. A whole-image cut
    collapsed on every one of them; the local crop keeps most, and a collapse falls back to the box, flagged."""
    from pixelperfect.synthetic.phantoms import display_uint8, make_phantom

    seg = GrabCutSegmenter()
    dices, chosen = [], []
    for i in range(6):
        phantom = make_phantom(i, seed=1, size=1024, positive_fraction=1.0)
        boxes = np.array(phantom.boxes, np.float64).reshape(-1, 4)
        pred = seg.predict_boxes(display_uint8(phantom.image), boxes)
        assert np.isnan(pred.best_scores).all()
        for box, mask, c in zip(boxes.astype(int), pred.masks, pred.chosen, strict=True):
            x1, y1, x2, y2 = box
            truth = np.zeros_like(phantom.mask)
            truth[y1:y2, x1:x2] = phantom.mask[y1:y2, x1:x2]
            dices.append(2 * np.count_nonzero(mask & truth) / (mask.sum() + truth.sum()))
            chosen.append(int(c))
            if c == GrabCutSegmenter.BOX:
                assert mask.sum() == (x2 - x1) * (y2 - y1) and mask[y1:y2, x1:x2].all()
            else:
                assert mask[y1:y2, x1:x2].sum() >= GrabCutSegmenter.MIN_KEPT * (x2 - x1) * (y2 - y1)
    assert chosen.count(GrabCutSegmenter.CUT) >= len(chosen) // 2, chosen
    assert float(np.mean(dices)) > 0.8, dices


def test_grabcut_flat_box_falls_back_to_the_box() -> None:
    img = np.full((64, 64), 100, np.uint8)
    pred = GrabCutSegmenter().predict_boxes(img, np.array([[10.0, 10, 30, 40], [5, 5, 6, 6]]))
    assert pred.chosen.tolist() == [GrabCutSegmenter.BOX, GrabCutSegmenter.BOX]
    assert pred.masks[0].sum() == 20 * 30 and pred.masks[0][10:40, 10:30].all()
    assert pred.masks[1].sum() == 1


def test_worker_refuses_a_checkpoint_other_than_the_runs(
    tmp_path: Path, tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = embedded_settings(tmp_path)
    spec = RunSpec(
        id=1,
        name="r",
        source_url="file:///x",
        store_url="file:///y",
        model="sam_tiny",
        checkpoint=str(tiny_checkpoint),
        checkpoint_sha256="0" * 64,
        variants=(),
        process=None,
    )  # type: ignore[arg-type]
    with pytest.raises(CheckpointMismatchError, match="sha256"):
        Runtime(settings).segmenter(spec)
    ok = RunSpec(**{**spec.__dict__, "checkpoint_sha256": sha256_hex(tiny_checkpoint.read_bytes())})
    rt, loads = Runtime(settings), count_model_loads(monkeypatch)
    assert rt.segmenter(ok) is rt.segmenter(ok) and loads == [ok.model]  # loaded once per process
