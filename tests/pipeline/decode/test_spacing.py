"""Pixel spacing: which DICOM attribute applies, what is refused (recorded unknown with a warning), the
``--pixel-spacing`` option, and the unit each surface score is computed in."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.dataset import Dataset

from pixelperfect.pipeline.decode.reader import decode_image
from pixelperfect.pipeline.decode.spacing import (
    dicom_spacing_meta,
    parse_spacing_option,
    resolve_spacing,
    validate_spacing,
)
from pixelperfect.pipeline.options import ProcessSettings
from pixelperfect.pipeline.records import ImageInput
from pixelperfect.pipeline.score.metrics import hd95, nsd, surface_scores
from pixelperfect.pipeline.score.segments import prompt_accuracy
from tests.pipeline.decode.test_dicom import write_dicom


def _ds(**attrs: object) -> Dataset:
    ds = Dataset()
    for name, value in attrs.items():
        setattr(ds, name, value)
    return ds


def test_pixel_spacing_wins_over_imager_pixel_spacing() -> None:
    meta = dicom_spacing_meta(_ds(PixelSpacing=[0.14, 0.15], ImagerPixelSpacing=[0.2, 0.2]))
    assert meta == {"pixel_spacing": [0.14, 0.15], "spacing_mm": [0.14, 0.15], "spacing_source": "PixelSpacing"}


def test_imager_pixel_spacing_is_moved_to_the_object_plane_by_the_magnification_factor() -> None:
    meta = dicom_spacing_meta(_ds(ImagerPixelSpacing=[0.2, 0.22], EstimatedRadiographicMagnificationFactor=1.1))
    assert meta["spacing_mm"] == pytest.approx([0.2 / 1.1, 0.22 / 1.1])
    assert meta["spacing_source"] == "ImagerPixelSpacing/EstimatedRadiographicMagnificationFactor"
    plain = dicom_spacing_meta(_ds(ImagerPixelSpacing=[0.2, 0.2]))
    assert plain["spacing_mm"] == [0.2, 0.2] and plain["spacing_source"] == "ImagerPixelSpacing (detector plane)"
    assert dicom_spacing_meta(_ds()) == {"pixel_spacing": None, "spacing_mm": None, "spacing_source": None}


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ([0.0, 0.14], "not > 0"),
        ([-0.1, 0.14], "not > 0"),
        ([0.14, 1.6], "ratio above 10"),
        ([0.14], "2 values"),
        (["abc", "0.1"], "not numeric"),
        ([float("inf"), 0.1], "not > 0"),
    ],
)
def test_bad_spacing_is_unknown_with_a_warning(value: list[object], why: str) -> None:
    spacing, warning = validate_spacing(value, "PixelSpacing")
    assert spacing is None and warning is not None and why in warning and "PixelSpacing" in warning


def test_a_dicom_file_with_bad_spacing_decodes_and_records_why() -> None:
    stored = (np.arange(64 * 64).reshape(64, 64) % 4096).astype(np.uint16)
    data = write_dicom(stored, PixelSpacing=[0.0, 0.2])
    meta = decode_image(data, "a.dcm").meta
    assert meta["spacing_mm"] is None and "not > 0" in meta["spacing_warning"] and meta["pixel_spacing"] == [0, 0.2]
    good = decode_image(write_dicom(stored, PixelSpacing=[0.3, 0.25]), "b.dcm").meta
    assert good["spacing_mm"] == [0.3, 0.25] and "spacing_warning" not in good


def test_pixel_spacing_option_and_resolution_order() -> None:
    assert parse_spacing_option("0.14") == (0.14, 0.14)
    assert parse_spacing_option("0.14, 0.2") == (0.14, 0.2)
    for bad in ("0", "-1,1", "x", "0.1,2", "1,2,3"):
        with pytest.raises(ValueError, match="--pixel-spacing"):
            parse_spacing_option(bad)
    # the file's own spacing first, then the run's option, else unknown
    assert resolve_spacing({"spacing_mm": [0.3, 0.3]}, (0.1, 0.1)) == ((0.3, 0.3), {})
    assert resolve_spacing({"format": "png"}, (0.1, 0.2)) == (
        (0.1, 0.2),
        {"spacing_mm": [0.1, 0.2], "spacing_source": "--pixel-spacing"},
    )
    assert resolve_spacing({"spacing_mm": None, "spacing_warning": "x"}, None) == (None, {"spacing_mm": None})


def test_surface_scores_carry_their_unit_and_use_the_mm_tolerance() -> None:
    truth = np.zeros((60, 60), bool)
    truth[20:40, 20:40] = True
    pred = np.zeros_like(truth)
    pred[22:42, 20:40] = True  # 2 rows lower
    mm = surface_scores(pred, truth, (0.5, 0.5), tolerance_px=2.0, tolerance_mm=0.5)
    px = surface_scores(pred, truth, None, tolerance_px=2.0, tolerance_mm=0.5)
    assert mm["surface_unit"] == "mm" and px["surface_unit"] == "px"
    assert mm["hd95"] == pytest.approx(1.0) and px["hd95"] == pytest.approx(2.0)  # 2 rows of 0.5 mm
    assert mm["nsd"] == nsd(pred, truth, 0.5, (0.5, 0.5)) and px["nsd"] == nsd(pred, truth, 2.0) == 1.0
    assert mm["nsd"] < 1.0  # type: ignore[operator]  # 0.5 mm is 1 row: the shifted top and bottom edges miss
    # a run from before millimetres (no mm tolerance) stays in px even where the spacing is known
    legacy = surface_scores(pred, truth, (0.5, 0.5), tolerance_px=2.0, tolerance_mm=None)
    assert legacy == {"nsd": 1.0, "hd95": hd95(pred, truth), "surface_unit": "px"}


def test_box_accuracy_uses_the_image_spacing() -> None:
    truth = np.zeros((50, 50), bool)
    truth[10:30, 10:30] = True
    pred = np.zeros_like(truth)
    pred[10:30, 10:34] = True  # 4 columns wider
    box = np.array([5.0, 5.0, 45.0, 45.0])
    settings = ProcessSettings(nsd_tolerance=2.0, nsd_tolerance_mm=2.0)
    image = ImageInput("a.png", truth.astype(np.uint8), [list(box)], gt_mask=truth, spacing=(1.0, 0.25))
    scores = prompt_accuracy(pred, box, image.gt_mask, settings, image.spacing)
    assert scores["surface_unit"] == "mm" and scores["hd95"] == pytest.approx(1.0)  # 4 columns x 0.25 mm
    assert scores["nsd"] == 1.0  # every boundary pixel within 1 mm < 2 mm
    unknown = prompt_accuracy(pred, box, truth, settings, None)
    assert unknown["surface_unit"] == "px" and unknown["hd95"] == pytest.approx(4.0) and unknown["nsd"] < 1.0  # type: ignore[operator]
    with pytest.raises(ValueError, match="mm"):
        ProcessSettings(nsd_tolerance_mm=-1.0)
