"""SAM weights: checkpoints from a path or s3://, state dicts through segment-anything's registry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pixelperfect.pipeline.model.sam import SamSegmenter
from pixelperfect.pipeline.model.weights import CheckpointError, TinyConfig, build_tiny_sam, load_sam
from pixelperfect.storage import read_url
from tests.conftest import S3Server


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
