"""DICOM-SEG building (no services): Type 2 attributes an archive lacks, PatientOrientation for a CR, validation
by dciodvfy, deterministic UIDs, masks at another resolution, and a source that is not DICOM."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from pixelperfect.pipeline.output.dicomseg import SegAlgorithm, SegBuildError, build_seg
from tests.orthanc import dicom_phantoms

ALG = SegAlgorithm("sam_tiny", "ab" * 32, "clahe", "0.0")


def _source_without_patient_sex(path: Path) -> bytes:
    ds = pydicom.dcmread(path)
    del ds.PatientSex
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_seg_of_a_cr_without_patient_sex_is_valid(tmp_path: Path) -> None:
    source = _source_without_patient_sex(dicom_phantoms(tmp_path, 1, seed=51)[0])
    small = np.zeros((128, 128), bool)
    small[20:60, 30:90] = True  # a mask at half the source's resolution: resized to 256²
    empty = np.zeros((256, 256), bool)
    uid, data = build_seg(source, [small, empty], ALG, run="r", image_key="a/b/c")
    again, _ = build_seg(source, [small, empty], ALG, run="r", image_key="a/b/c")
    assert uid == again  # a rebuilt SEG is the same object
    seg = pydicom.dcmread(io.BytesIO(data))
    assert seg.Modality == "SEG" and seg.SegmentationType == "BINARY" and seg.PatientSex == ""
    assert seg.PatientOrientation == "" and len(seg.SegmentSequence) == 2
    algo = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert algo.AlgorithmName == "sam_tiny clahe" and algo.AlgorithmVersion == "ab" * 32
    frames = seg.pixel_array.reshape(2, 256, 256)
    assert frames[0].sum() == 80 * 120 and frames[1].sum() == 0
    out = tmp_path / "seg.dcm"
    out.write_bytes(data)
    check = subprocess.run(["dciodvfy", str(out)], capture_output=True, text=True, timeout=60)
    assert not [line for line in (check.stdout + check.stderr).splitlines() if line.startswith("Error")]


def test_seg_of_a_non_dicom_source_fails_with_a_reason() -> None:
    with pytest.raises(SegBuildError, match="not a DICOM file"):
        build_seg(b"\x89PNG\r\n\x1a\nnot dicom", [np.ones((4, 4), bool)], ALG, run="r", image_key="x.png")
    with pytest.raises(SegBuildError, match="no segment"):
        build_seg(b"", [], ALG, run="r", image_key="x")


def test_overlapping_and_disjoint_masks_give_the_same_frames(tmp_path: Path) -> None:
    source = dicom_phantoms(tmp_path, 1, seed=52)[0].read_bytes()
    a, b, c = (np.zeros((256, 256), bool) for _ in range(3))
    a[10:100, 10:100], b[150:200, 150:200], c[50:120, 50:120] = True, True, True  # c overlaps a
    for masks in ([a, b], [a, c], [a, b, c]):
        _, data = build_seg(source, masks, ALG, run="r", image_key="k")
        frames = pydicom.dcmread(io.BytesIO(data)).pixel_array.reshape(len(masks), 256, 256)
        assert all(np.array_equal(f > 0, m) for f, m in zip(frames, masks, strict=True))
