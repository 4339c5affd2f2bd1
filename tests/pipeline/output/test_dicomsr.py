"""TID 1500 SRs (no services): dciodvfy finds no error in the SR and its SEG (and does in highdicom's default SEG
reference, the reason for ours), highdicom reads back the measurements given, an independent pydicom walk finds
the concept codes at their TID positions, provenance (IHE AIR) and the research-use label, and build errors."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest

from pixelperfect.pipeline.output.dicomseg import SegAlgorithm, build_seg, read_source_header
from pixelperfect.pipeline.output.dicomsr import SCHEME, SegmentMeasures, SrBuildError, build_sr
from tests.orthanc import dicom_phantoms

ALG = SegAlgorithm("sam_tiny", "ab" * 32, "clahe", "0.3.0+gabc1234", "sr-run")
MEASURES = [
    SegmentMeasures(
        0,
        score=0.91,
        stability=0.95,
        consistency_std=0.012,
        consistency_iou=0.88,
        dice=0.7,
        hd95=3.5,
        surface_unit="mm",
    ),
    SegmentMeasures(1, score=0.52, stability=0.6),  # no jitter, no ground truth: those measurements are left out
]


def dciodvfy_errors(data: bytes, tmp_path: Path, name: str) -> list[str]:
    path = tmp_path / name
    path.write_bytes(data)
    check = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (check.stdout + check.stderr).splitlines() if line.startswith("Error")]


def _seg_and_source(tmp_path: Path) -> tuple[Any, Any, bytes]:
    source = dicom_phantoms(tmp_path, 1, seed=61)[0].read_bytes()
    a, b = np.zeros((256, 256), bool), np.zeros((256, 256), bool)
    a[10:60, 20:100], b[120:200, 120:150] = True, True  # 4000 and 2400 px
    _, seg_bytes = build_seg(source, [a, b], ALG, run=ALG.run, image_key="s/e/i")
    return read_source_header(source), pydicom.dcmread(io.BytesIO(seg_bytes)), seg_bytes


def test_sr_and_seg_pass_dciodvfy_and_read_back(tmp_path: Path) -> None:
    import highdicom as hd

    header, seg, seg_bytes = _seg_and_source(tmp_path)
    uid, data = build_sr(header, seg, MEASURES, ALG, image_key="s/e/i", spacing=(0.5, 0.25))
    assert uid == build_sr(header, seg, MEASURES, ALG, image_key="s/e/i", spacing=(0.5, 0.25))[0]  # deterministic
    assert dciodvfy_errors(data, tmp_path, "sr.dcm") == []
    assert dciodvfy_errors(seg_bytes, tmp_path, "seg.dcm") == []
    sr = hd.sr.srread(io.BytesIO(data))
    groups = sr.content.get_planar_roi_measurement_groups()
    assert len(groups) == 2
    got = [{m.name.value: (m.value, m.unit.value) for m in g.get_measurements()} for g in groups]
    # area: the SEG frame's pixels x 0.5 x 0.25 mm² (4000 px -> 500 mm², 2400 px -> 300 mm²)
    assert got[0]["42798000"] == (pytest.approx(500.0, abs=1e-6), "mm2")
    assert got[1]["42798000"] == (pytest.approx(300.0, abs=1e-6), "mm2")
    assert got[0]["PP0001"] == (pytest.approx(0.91, abs=1e-9), "1") and got[0]["PP0005"][0] == pytest.approx(0.7)
    assert got[0]["PP0006"] == (pytest.approx(3.5, abs=1e-9), "mm") and got[0]["PP0004"][0] == pytest.approx(0.88)
    assert set(got[1]) == {"42798000", "PP0001", "PP0002"}
    assert [str(g.tracking_identifier) for g in groups] == ["clahe prompt 0", "clahe prompt 1"]
    assert len({str(g.tracking_uid) for g in groups}) == 2


def _items(node: Any) -> list[Any]:
    return list(getattr(node, "ContentSequence", []))


def _name(item: Any) -> tuple[str, str]:
    code = item.ConceptNameCodeSequence[0]
    return str(code.CodeValue), str(code.CodingSchemeDesignator)


def test_content_tree_has_the_codes_at_their_positions(tmp_path: Path) -> None:
    """A pydicom walk of the tree, not highdicom reading what it wrote: TID 1500 root, observer device, TID 1410
    groups with the segment reference, tracking items and the measurement codes."""
    header, seg, _ = _seg_and_source(tmp_path)
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):  # a source without a spacing: areas in pixels
        if keyword in header:
            delattr(header, keyword)
    _, data = build_sr(header, seg, MEASURES, ALG, image_key="s/e/i", spacing=None)
    ds = pydicom.dcmread(io.BytesIO(data))
    assert ds.Modality == "SR" and _name(ds) == ("126000", "DCM")  # Imaging Measurement Report
    assert ds.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    assert ds.CompletionFlag == "COMPLETE" and ds.VerificationFlag == "UNVERIFIED"
    root = _items(ds)
    observer_type = next(i for i in root if _name(i) == ("121005", "DCM"))  # Observer Type: Device
    assert observer_type.ConceptCodeSequence[0].CodeValue == "121007"
    device_uid = next(i for i in root if _name(i) == ("121012", "DCM"))  # Device Observer UID
    assert ALG.device_uid == device_uid.UID
    measurements = next(i for i in root if _name(i) == ("126010", "DCM"))  # Imaging Measurements
    groups = _items(measurements)
    assert [_name(g) for g in groups] == [("125007", "DCM")] * 2  # Measurement Group
    for number, group in enumerate(groups, start=1):
        names = [_name(i) for i in _items(group)]
        assert ("112039", "DCM") in names and ("112040", "DCM") in names  # tracking identifier and UID
        ref = next(i for i in _items(group) if _name(i) == ("121214", "DCM"))  # Referenced Segmentation Frame
        sop = ref.ReferencedSOPSequence[0]
        assert ref.ValueType == "IMAGE" and sop.ReferencedSOPInstanceUID == seg.SOPInstanceUID
        assert sop.ReferencedSegmentNumber == number and "ReferencedFrameNumber" not in sop
        source = next(i for i in _items(group) if _name(i) == ("121233", "DCM"))  # Source Image for Segmentation
        assert "ReferencedFrameNumber" not in source.ReferencedSOPSequence[0]
        nums = {_name(i): i for i in _items(group) if i.ValueType == "NUM"}
        area = nums[("42798000", "SCT")].MeasuredValueSequence[0]
        assert area.MeasurementUnitsCodeSequence[0].CodeValue == "{pixels}"  # no spacing: pixels, said so
        assert float(area.NumericValue) == [4000, 2400][number - 1]
        assert ("PP0001", SCHEME) in nums
    schemes = [s.CodingSchemeDesignator for s in ds.CodingSchemeIdentificationSequence]
    assert SCHEME in schemes


def test_highdicoms_default_reference_is_what_dciodvfy_refuses(tmp_path: Path) -> None:
    """Why the SR references the segment only: ``from_segmentation`` writes frame and segment numbers (PS3.3 Table
    10-3 makes them exclusive) and a frame number for the single-frame source; dciodvfy reports errors."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    header, seg, _ = _seg_and_source(tmp_path)
    for keyword in ("PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID",
                    "AccessionNumber"):  # fmt: skip
        if keyword not in header:
            setattr(header, keyword, "")
    group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="x"),
        referenced_segment=hd.sr.ReferencedSegmentationFrame.from_segmentation(seg, segment_number=1),
    )
    observer = hd.sr.ObserverContext(
        observer_type=codes.cid270.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(uid=hd.UID()),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=hd.sr.CodedConcept("399208008", "SCT", "Plain chest X-ray"),
        imaging_measurements=[group],
    )
    sr = hd.sr.ComprehensiveSR([header, seg], report[0], hd.UID(), 1, hd.UID(), 1, manufacturer="x")
    buf = io.BytesIO()
    sr.save_as(buf, enforce_file_format=True)
    errors = dciodvfy_errors(buf.getvalue(), tmp_path, "default.dcm")
    assert any("ReferencedSegmentNumber" in e or "ReferencedFrameNumber" in e for e in errors), errors


def test_provenance_and_research_use_on_seg_and_sr(tmp_path: Path) -> None:
    header, seg, _ = _seg_and_source(tmp_path)
    _, data = build_sr(header, seg, MEASURES, ALG, image_key="s/e/i")
    for ds in (seg, pydicom.dcmread(io.BytesIO(data))):
        ours = [e for e in ds.ContributingEquipmentSequence if e.Manufacturer == "PixelPerfect"]
        assert len(ours) == 1
        item = ours[0]
        assert item.ManufacturerModelName == "sam_tiny" and item.DeviceUID == ALG.device_uid
        assert list(item.SoftwareVersions) == ["0.3.0+gabc1234", "ab" * 32]
        assert item.PurposeOfReferenceCodeSequence[0].CodeValue == "109102"
        assert "sr-run" in item.ContributionDescription and "RESEARCH USE ONLY" in item.ContributionDescription
        assert ds.SeriesDescription.startswith("RESEARCH USE ONLY PixelPerfect")
    assert "RESEARCH USE ONLY" in seg.ImageComments
    other = SegAlgorithm("sam_tiny", "ab" * 32, "raw", "9.9", "another-run", research_use=False)
    assert other.device_uid == ALG.device_uid  # stable per model and checkpoint
    assert not other.description("SEG").startswith("RESEARCH")


def test_sr_build_errors_are_reasons(tmp_path: Path) -> None:
    header, seg, _ = _seg_and_source(tmp_path)
    with pytest.raises(SrBuildError, match="no segment"):
        build_sr(header, seg, [], ALG, image_key="k")
    with pytest.raises(SrBuildError, match="2 frames for 3 segments"):
        build_sr(header, seg, [*MEASURES, SegmentMeasures(2)], ALG, image_key="k")
