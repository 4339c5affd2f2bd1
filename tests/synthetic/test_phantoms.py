"""Phantoms: deterministic, realistic ranges, exact masks and tight RSNA-style boxes, PNG and DICOM output."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest

from pixelperfect.synthetic.phantoms import (
    BOX_HEIGHT_RANGE,
    BOX_WIDTH_RANGE,
    MAX_VALUE,
    display_uint8,
    make_phantom,
    write_phantoms,
)

SIZE = 256


@pytest.fixture(scope="module")
def phantoms() -> list:
    return [make_phantom(i, seed=3, size=SIZE) for i in range(12)]


def test_deterministic_and_seed_dependent() -> None:
    a, b = make_phantom(5, seed=1, size=SIZE), make_phantom(5, seed=1, size=SIZE)
    assert a.id == "phantom-00005"
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask) and a.boxes == b.boxes
    assert not np.array_equal(a.image, make_phantom(5, seed=2, size=SIZE).image)
    assert not np.array_equal(a.image, make_phantom(6, seed=1, size=SIZE).image)


def test_types_and_ranges(phantoms: list) -> None:
    for p in phantoms:
        assert p.image.shape == (SIZE, SIZE) and p.image.dtype == np.uint16
        assert p.mask.shape == (SIZE, SIZE) and p.mask.dtype == bool
        assert int(p.image.max()) <= MAX_VALUE
        assert len(p.boxes) <= 2
        assert bool(p.mask.any()) == bool(p.boxes)


def test_boxes_are_tight_around_mask_and_rsna_sized(phantoms: list) -> None:
    scale = SIZE / 1024
    union = np.zeros((SIZE, SIZE), bool)
    for p in phantoms:
        for x1, y1, x2, y2 in p.boxes:
            w, h = x2 - x1, y2 - y1
            assert BOX_WIDTH_RANGE[0] * scale <= w <= BOX_WIDTH_RANGE[1] * scale
            assert BOX_HEIGHT_RANGE[0] * scale <= h <= BOX_HEIGHT_RANGE[1] * scale
            inside = p.mask[y1:y2, x1:x2]
            # each edge row/column of a tight box touches the mask
            assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
            assert y1 >= 0.25 * SIZE  # mid and lower zones
            union[y1:y2, x1:x2] = True
        if p.boxes:
            covered = np.zeros_like(p.mask)
            for x1, y1, x2, y2 in p.boxes:
                covered[y1:y2, x1:x2] = True
            assert not (p.mask & ~covered).any()


def test_positive_fraction_and_sides() -> None:
    ps = [make_phantom(i, seed=0, size=128) for i in range(40)]
    positives = sum(bool(p.boxes) for p in ps)
    assert 20 <= positives <= 38
    assert any(len(p.boxes) == 2 for p in ps)
    assert not any(make_phantom(i, size=128, positive_fraction=0.0).boxes for i in range(5))
    assert all(make_phantom(i, size=128, positive_fraction=1.0).boxes for i in range(5))


def test_looks_like_a_chest(phantoms: list) -> None:
    p = next(q for q in phantoms if not q.boxes) if any(not q.boxes for q in phantoms) else phantoms[0]
    img = p.image.astype(np.float32)
    s = SIZE
    lung_l = img[int(0.35 * s) : int(0.5 * s), int(0.22 * s) : int(0.32 * s)].mean()
    lung_r = img[int(0.35 * s) : int(0.5 * s), int(0.68 * s) : int(0.78 * s)].mean()
    spine = img[int(0.3 * s) : int(0.5 * s), int(0.48 * s) : int(0.52 * s)].mean()
    abdomen = img[int(0.88 * s) :, int(0.3 * s) : int(0.7 * s)].mean()
    corner = img[int(0.6 * s) :, : int(0.03 * s)].mean()
    assert lung_l < spine - 300 and lung_r < spine - 300  # dark lungs beside a bright mediastinum
    assert lung_l < abdomen - 300  # below the diaphragm is dense
    assert corner < lung_l  # air outside the body is darkest


def test_validation() -> None:
    with pytest.raises(ValueError, match="size"):
        make_phantom(0, size=16)
    with pytest.raises(ValueError, match="positive_fraction"):
        make_phantom(0, positive_fraction=1.5)
    with pytest.raises(ValueError, match="index"):
        make_phantom(-1)


def test_write_png(tmp_path: Path) -> None:
    ps = write_phantoms(tmp_path, 4, seed=1, size=128)
    for p in ps:
        img = cv2.imread(str(tmp_path / "images" / f"{p.id}.png"), cv2.IMREAD_UNCHANGED)
        assert img.dtype == np.uint8 and np.array_equal(img, display_uint8(p.image))
        mask = cv2.imread(str(tmp_path / "masks" / f"{p.id}.png"), cv2.IMREAD_UNCHANGED)
        assert set(np.unique(mask)) <= {0, 255} and np.array_equal(mask > 0, p.mask)
    with open(tmp_path / "labels.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["patientId", "x", "y", "width", "height", "Target"]
    expected = []
    for p in ps:
        expected += [(p.id, x1, y1, x2 - x1, y2 - y1) for x1, y1, x2, y2 in p.boxes] or [(p.id, None)]
    got = [
        (r["patientId"], int(r["x"]), int(r["y"]), int(r["width"]), int(r["height"]))
        if r["Target"] == "1"
        else (r["patientId"], None)
        for r in rows
    ]
    assert got == expected
    assert all(r["x"] == "" for r in rows if r["Target"] == "0")


def test_write_dicom(tmp_path: Path) -> None:
    ps = write_phantoms(tmp_path, 2, seed=1, size=96, fmt="dicom")
    for index, p in enumerate(ps):
        ds = pydicom.dcmread(tmp_path / "images" / f"{p.id}.dcm")
        assert ds.BitsStored == 12 and ds.BitsAllocated == 16 and ds.ViewPosition == "PA"
        assert ds.Modality in ("CR", "DX") and len(ds.PixelSpacing) == 2 and ds.PatientID
        stored = ds.pixel_array
        if index % 2:
            assert ds.PhotometricInterpretation == "MONOCHROME1"
            assert np.array_equal(stored, MAX_VALUE - p.image)
        else:
            assert ds.PhotometricInterpretation == "MONOCHROME2"
            assert np.array_equal(stored, p.image)
