"""Reduced-resolution decode through the model: on 2800x2300 JPEG 2000 phantoms (lossless, and lossy with three
quality layers, of which a reduced decode reads one) with exact masks, SAM fed the resolution level it needs gives
the masks of the full decode, in the original's pixel grid."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from pixelperfect.pipeline.decode.reader import decode_image
from pixelperfect.pipeline.model.grabcut import GrabCutSegmenter
from pixelperfect.pipeline.model.protocol import model_input_side
from pixelperfect.pipeline.model.sam import SamSegmenter
from pixelperfect.pipeline.model.weights import TinyConfig, build_tiny_sam
from pixelperfect.pipeline.options import Jitter
from pixelperfect.pipeline.preprocess.variants import parse_variant
from pixelperfect.pipeline.score.overlap import dice
from pixelperfect.pipeline.stages import ImageInput, ProcessSettings, process_images
from pixelperfect.synthetic.archive_phantoms import ARCHIVE_KINDS, archive_phantom, encoder_missing
from tests.conftest import embedded_settings


def _masks(results: list) -> list[np.ndarray]:
    return [cv2.imdecode(np.frombuffer(s.mask_png, np.uint8), cv2.IMREAD_GRAYSCALE) > 0 for r in results
            for s in r.segments]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["j2k_lossless", "j2k_lossy"])  # lossy: a reduced decode also drops layers
def test_reduced_j2k_decode_gives_the_full_decodes_masks(kind: str) -> None:
    if encoder_missing(ARCHIVE_KINDS[kind]):
        pytest.skip(f"{kind} needs {encoder_missing(ARCHIVE_KINDS[kind])} to encode")
    torch.manual_seed(0)
    segmenter = SamSegmenter(build_tiny_sam(TinyConfig(image_size=1024)), torch.device("cpu"), name="sam_tiny")
    assert model_input_side(segmenter) == 1024 and model_input_side(GrabCutSegmenter()) is None
    variants = [parse_variant("raw"), parse_variant("clahe")]
    settings = ProcessSettings(jitter=Jitter(k=0))  # the prompts themselves: jitter adds cost, not coverage
    full_inputs, reduced_inputs = [], []
    for index in (0, 1):  # MONOCHROME2, MONOCHROME1
        data, phantom = archive_phantom(kind, index, seed=5)
        assert phantom.image.shape == (2300, 2800) and phantom.boxes
        full = decode_image(data, f"{index}.dcm")
        small = decode_image(data, f"{index}.dcm", model_side=1024)
        assert small.shape == (1150, 1400) and small.full_shape == full.shape == (2300, 2800)
        boxes = [list(map(float, b)) for b in phantom.boxes]
        full_inputs.append(ImageInput(f"{index}", full.pixels, boxes, gt_mask=phantom.mask))
        reduced_inputs.append(ImageInput(f"{index}", small.pixels, boxes, phantom.mask, full_size=small.full_shape))
    full_results = process_images(full_inputs, variants, segmenter, settings)
    reduced_results = process_images(reduced_inputs, variants, segmenter, settings)
    full_masks, reduced_masks = _masks(full_results), _masks(reduced_results)
    assert len(full_masks) == len(reduced_masks) >= 4
    assert all(m.shape == (2300, 2800) for m in reduced_masks)  # the original's grid
    agreement = [dice(a, b) for a, b in zip(full_masks, reduced_masks, strict=True)]
    mean, least = np.mean(agreement), np.min(agreement)
    print(f"{kind} reduced vs full: mean Dice {mean:.4f}, min {least:.4f}, n={len(agreement)}")
    assert np.mean(agreement) >= 0.98, agreement
    rows_full = [s for r in full_results for s in r.segments]
    rows_reduced = [s for r in reduced_results for s in r.segments]
    assert [r.prompt for r in rows_full] == [r.prompt for r in rows_reduced]  # prompts in full coordinates
    accuracy_full = np.mean([r.dice for r in rows_full])
    accuracy_reduced = np.mean([r.dice for r in rows_reduced])
    print(f"{kind} Dice vs ground truth: full {accuracy_full:.4f}, reduced {accuracy_reduced:.4f}")
    assert accuracy_reduced >= accuracy_full - 0.01, (accuracy_full, accuracy_reduced)


def test_sam_prepare_maps_a_reduced_image_to_the_full_images_input_size() -> None:
    torch.manual_seed(0)
    segmenter = SamSegmenter(build_tiny_sam(TinyConfig(image_size=256)), torch.device("cpu"), name="sam_tiny")
    full = np.random.default_rng(0).integers(0, 255, (1001, 777), dtype=np.uint8)
    reduced = cv2.resize(full, (389, 501), interpolation=cv2.INTER_AREA)  # ceil halves, as JPEG 2000 levels
    a, b = segmenter.prepare(full), segmenter.prepare(reduced, original_size=(1001, 777))
    assert a.original_size == b.original_size == (1001, 777)
    assert tuple(a.pixels.shape) == tuple(b.pixels.shape) == (256, 199)
    box = np.array([[100.0, 200.0, 600.0, 900.0]])
    prediction = segmenter.predict_boxes(segmenter.encode([b])[0], box)
    assert prediction.masks.shape == (1, 1001, 777)


@pytest.mark.parametrize("full_resolution", [False, True])
def test_embedded_run_on_j2k_dicoms_keeps_the_original_grid(
    tmp_path: Path, tiny_checkpoint: Path, full_resolution: bool
) -> None:
    """A run through ``run_batch`` (embedded, SQLite, file:// store) on 600x500 JPEG 2000 films with sam_tiny (256
    px input): decoded at level 1 (300x250), unless ``decode_full_resolution``; rows and masks at 600x500."""
    from sqlalchemy import select

    from pixelperfect.db.models import Image
    from pixelperfect.db.session import session_scope
    from pixelperfect.embedded import SubmitRequest, submit

    images = tmp_path / "images"
    images.mkdir()
    labels = ["patientId,x,y,width,height,Target"]
    for index in (0, 1):
        data, phantom = archive_phantom("j2k_lossless", index, shape=(500, 600))
        (images / f"{phantom.id}.dcm").write_bytes(data)
        labels += [f"{phantom.id},{x1},{y1},{x2 - x1},{y2 - y1},1" for x1, y1, x2, y2 in phantom.boxes]
    (tmp_path / "labels.csv").write_text("\n".join(labels) + "\n")
    cfg = embedded_settings(tmp_path, decode_full_resolution=full_resolution)
    req = SubmitRequest(source=str(images), run="j2k", variants=["raw"], model="sam_tiny",
                        checkpoint=str(tiny_checkpoint), annotations=str(tmp_path / "labels.csv"))  # fmt: skip
    submit(req, cfg)
    with session_scope(cfg.database_url) as session:
        rows = list(session.scalars(select(Image)))
        assert [r.status for r in rows] == ["done", "done"]
        assert all((r.width, r.height) == (600, 500) for r in rows)
        scales = {r.meta.get("decode_scale") for r in rows}
        assert scales == ({None} if full_resolution else {2})
    masks = list((tmp_path / "store").rglob("*.png"))
    assert masks and all(cv2.imread(str(m), cv2.IMREAD_GRAYSCALE).shape == (500, 600) for m in masks)
