"""TID 1500 Measurement Reports (DICOM SR) of a run's SEGs, with highdicom. No I/O: datasets in, bytes out.

One Comprehensive SR per source image and variant, beside its SEG (``--output png,dicom-seg,dicom-sr``): a
``MeasurementReport`` (TID 1500) whose observer is the algorithm as a device (its stable device UID, the model as
name and model name), with one ``PlanarROIMeasurementsAndQualitativeEvaluations`` group (TID 1410) per segment.
Each group carries a tracking identifier (``<variant> prompt <i>``) and a tracking UID derived from (run, image,
variant, prompt), the TID 4019 algorithm identification, and its measurements (TID 300):

========================================  =================================  ======================================
measurement                               concept name                       unit (UCUM)
========================================  =================================  ======================================
area of the segment at the source's size  (42798000, SCT, "Area")            ``mm2`` with a known pixel spacing,
                                                                             else ``{pixels}``
SAM's predicted IoU of the chosen mask    (PP0001, 99PIXPERF, ...)            ``1``
stability (IoU at two thresholds)         (PP0002, 99PIXPERF, ...)            ``1``
consistency std of the predicted IoUs     (PP0003, 99PIXPERF, ...)            ``1``
mean IoU of the masks under box jitter    (PP0004, 99PIXPERF, ...)            ``1``
Dice against the ground truth             (PP0005, 99PIXPERF, ...)            ``1``
HD95 against the ground truth             (PP0006, 99PIXPERF, ...)            ``mm`` or ``{pixels}``
========================================  =================================  ======================================

The private coding scheme ``99PIXPERF`` (its meanings in :data:`CODES` and docs/archives.md) is declared in the
SR's Coding Scheme Identification Sequence. A measurement SQL does not hold (no ground truth, no jitter) is left out.

The SEG reference (TID 1410 row "Referenced Segmentation Frame"): the IMAGE item names the SEG and the segment by
Referenced Segment Number only. PS3.3 Table 10-3 makes Referenced Frame Number and Referenced Segment Number
mutually exclusive, and highdicom's ``ReferencedSegmentationFrame.from_segmentation`` writes both (and a frame
number on the single-frame source image too): ``dciodvfy`` then reports two errors per group. Our SEGs hold one
frame per segment, so the segment number alone names exactly the frame; the source image is referenced without a
frame number.
"""

from __future__ import annotations

import copy
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pixelperfect.pipeline.output.dicomseg import (
    _TYPE2,
    MANUFACTURER,
    SegAlgorithm,
    SegBuildError,
    contributing_equipment,
)

SERIES_NUMBER = 9902  # the SR series of a PixelPerfect run (one per study and variant)
#: The private coding scheme of PixelPerfect's measurements (a designator starting "99" is private, PS3.16 8.2).
SCHEME = "99PIXPERF"
SCHEME_NAME = "PixelPerfect measurements"
#: value -> meaning of the private codes (docs/archives.md lists them too).
CODES = {
    "PP0001": "Predicted IoU of mask",
    "PP0002": "Mask stability score",
    "PP0003": "Consistency std under box jitter",
    "PP0004": "Mean IoU under box jitter",
    "PP0005": "Dice coefficient to ground truth",
    "PP0006": "Hausdorff distance 95th percentile",
}
#: The SegmentMeasures field each private code carries.
FIELDS = {
    "PP0001": "score",
    "PP0002": "stability",
    "PP0003": "consistency_std",
    "PP0004": "consistency_iou",
    "PP0005": "dice",
    "PP0006": "hd95",
}


class SrBuildError(SegBuildError):
    """The SR cannot be built (no SEG, a SEG without the segment, a refused value)."""


@dataclass(frozen=True)
class SegmentMeasures:
    """One segment's measurements as SQL holds them (``segments`` row); ``None``: not measured."""

    prompt_index: int
    score: float | None = None
    stability: float | None = None
    consistency_std: float | None = None
    consistency_iou: float | None = None
    dice: float | None = None
    hd95: float | None = None
    surface_unit: str | None = None  # "mm" | "px": the unit of hd95


def sr_uids(run: str, image_key: str, variant: str, study_uid: str) -> tuple[str, str]:
    """``(SeriesInstanceUID, SOPInstanceUID)`` of the SR: deterministic like the SEG's."""
    from pydicom.uid import generate_uid

    series = generate_uid(entropy_srcs=["pixelperfect-sr-series", run, study_uid, variant])
    sop = generate_uid(entropy_srcs=["pixelperfect-sr", run, image_key, variant])
    return str(series), str(sop)


def tracking_uid(run: str, image_key: str, variant: str, prompt_index: int) -> str:
    from pydicom.uid import generate_uid

    return str(generate_uid(entropy_srcs=["pixelperfect-track", run, image_key, variant, str(prompt_index)]))


def code(value: str) -> Any:
    import highdicom as hd

    return hd.sr.CodedConcept(value, SCHEME, CODES[value])


def _unit(value: str, meaning: str) -> Any:
    import highdicom as hd

    return hd.sr.CodedConcept(value, "UCUM", meaning)


def source_spacing(ds: Any) -> tuple[float, float] | None:
    """The source's pixel spacing in mm (PixelSpacing, else ImagerPixelSpacing), or None."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(keyword)
        try:
            row, col = (float(v) for v in value)
        except (TypeError, ValueError):
            continue
        if row > 0 and col > 0:
            return row, col
    return None


def build_sr(
    source: Any,
    seg: Any,
    measures: Sequence[SegmentMeasures],
    algorithm: SegAlgorithm,
    *,
    image_key: str,
    spacing: tuple[float, float] | None = None,
) -> tuple[str, bytes]:
    """``(SOPInstanceUID, Part 10 bytes)`` of the TID 1500 report of ``seg`` (its pydicom dataset, pixel data
    included: the areas are counted on its frames) on ``source`` (the source's header dataset, not modified).

    ``measures``: one per segment, prompt order (segment ``i + 1`` is prompt ``i``). ``spacing``: (row, col) mm;
    None takes the source's own. Raises :class:`SrBuildError` when the report cannot be built."""
    import highdicom as hd
    import numpy as np
    from pydicom.sr.codedict import codes

    if not measures:
        raise SrBuildError("no segment: an image without prompts has no SR")
    ds = copy.copy(source)
    for keyword in _TYPE2:
        if keyword not in ds:
            setattr(ds, keyword, "")
    if int(getattr(seg, "NumberOfFrames", 0) or 0) != len(measures):
        raise SrBuildError(f"the SEG has {getattr(seg, 'NumberOfFrames', 0)} frames for {len(measures)} segments")
    spacing = spacing or source_spacing(ds)
    frames = np.asarray(seg.pixel_array).reshape(len(measures), int(seg.Rows), int(seg.Columns))
    run = algorithm.run
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=algorithm.device_uid,
        name=f"{algorithm.model} {algorithm.variant}"[:64],
        manufacturer_name=MANUFACTURER,
        model_name=algorithm.model[:64],
    )
    observer = hd.sr.ObserverContext(observer_type=codes.cid270.Device, observer_identifying_attributes=device)
    algo = hd.sr.AlgorithmIdentification(
        name=f"{algorithm.model} {algorithm.variant}"[:64],
        version=(algorithm.checkpoint_sha256 or "no-checkpoint")[:64],
        parameters=[f"variant={algorithm.variant}", f"code_version={algorithm.version}", f"run={run}"],
    )
    source_item = hd.sr.SourceImageForSegmentation.from_source_image(ds)
    groups = []
    try:
        for i, m in enumerate(measures):
            number = i + 1
            ref = hd.sr.ReferencedSegmentationFrame(
                sop_class_uid=seg.SOPClassUID,
                sop_instance_uid=seg.SOPInstanceUID,
                frame_number=number,
                segment_number=number,
                source_image=source_item,
            )
            del ref[0].ReferencedSOPSequence[0].ReferencedFrameNumber  # the segment names the frame (see above)
            groups.append(
                hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                    tracking_identifier=hd.sr.TrackingIdentifier(
                        uid=tracking_uid(run, image_key, algorithm.variant, m.prompt_index),
                        identifier=f"{algorithm.variant} prompt {m.prompt_index}"[:64],
                    ),
                    referenced_segment=ref,
                    finding_type=codes.SCT.Lesion,
                    algorithm_id=algo,
                    measurements=_measurements(m, int(np.count_nonzero(frames[i])), spacing),
                )
            )
        report = hd.sr.MeasurementReport(
            observation_context=hd.sr.ObservationContext(observer_device_context=observer),
            procedure_reported=hd.sr.CodedConcept("399208008", "SCT", "Plain chest X-ray"),
            imaging_measurements=groups,
            title=codes.cid7021.ImagingMeasurementReport,
        )
        series_uid, sop_uid = sr_uids(run, image_key, algorithm.variant, str(ds.StudyInstanceUID))
        sr = hd.sr.ComprehensiveSR(
            evidence=[ds, seg],
            content=report[0],
            series_instance_uid=series_uid,
            series_number=SERIES_NUMBER,
            sop_instance_uid=sop_uid,
            instance_number=1,
            manufacturer=MANUFACTURER,
            is_complete=True,
            is_final=False,  # verification pending: an algorithm's results until a person reads them
            series_description=algorithm.description("SR"),
            contributing_equipment=[contributing_equipment(algorithm)],
            coding_schemes=[
                hd.coding_schemes.CodingSchemeIdentificationItem(
                    designator=SCHEME, name=SCHEME_NAME, responsible_organization=MANUFACTURER
                )
            ],
        )
    except (ValueError, TypeError, AttributeError, KeyError, IndexError) as exc:
        raise SrBuildError(f"highdicom refused the SR: {type(exc).__name__}: {exc}") from None
    buf = io.BytesIO()
    sr.save_as(buf, enforce_file_format=True)
    return sop_uid, buf.getvalue()


def _measurements(m: SegmentMeasures, area_px: int, spacing: tuple[float, float] | None) -> list[Any]:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    ratio, pixels = _unit("1", "no units"), _unit("{pixels}", "pixels")
    if spacing is not None:
        area = hd.sr.Measurement(
            name=codes.SCT.Area, value=area_px * spacing[0] * spacing[1], unit=_unit("mm2", "square millimeter")
        )
    else:
        area = hd.sr.Measurement(name=codes.SCT.Area, value=area_px, unit=pixels)
    out = [area]
    for value, field in FIELDS.items():
        number = getattr(m, field)
        if number is None or not math.isfinite(number):  # NaN / inf (an empty mask's HD95): not measured
            continue
        unit = ratio
        if field == "hd95":
            unit = _unit("mm", "millimeter") if m.surface_unit == "mm" else pixels
        out.append(hd.sr.Measurement(name=code(value), value=float(number), unit=unit))
    return out


__all__ = ["CODES", "SCHEME", "SegmentMeasures", "SrBuildError", "build_sr", "sr_uids"]
