"""DICOM Segmentation objects (SEG) from a source instance and its masks, with highdicom. No I/O: bytes in, bytes out.

One SEG per source image and variant: BINARY, one segment per prompt (segment ``i + 1`` is prompt ``i``), at the
source's full resolution (Rows x Columns), algorithm type AUTOMATIC, the algorithm identified by model, variant and
checkpoint sha256, referencing the source instance. UIDs are derived from (run, image key, variant), so a rebuilt
or redelivered SEG is the same object and a PACS replaces rather than duplicates it.

The patient and study modules are copied from the source by highdicom, and nothing else of it: attributes the
standard makes Type 2 (present, may be empty) that an archive instance lacks — PatientSex, StudyDate, … — are
supplied empty, and a source without a frame of reference (a CR) lends its PatientOrientation (Type 2C), empty if it
has none, so validators (dciodvfy) accept the SEG.
"""

from __future__ import annotations

import copy
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Type 2 attributes of the patient and general study modules that highdicom copies and that must be present.
_TYPE2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)
SERIES_NUMBER = 9901  # the SEG series of a PixelPerfect run (one per study and variant)
MANUFACTURER = "PixelPerfect"


class SegBuildError(ValueError):
    """The SEG cannot be built for this source (not DICOM, no image, masks of the wrong shape, ...)."""


#: Series description prefix and comment of every object of a run marked research use (``research_use``).
RESEARCH_USE = "RESEARCH USE ONLY"


@dataclass(frozen=True)
class SegAlgorithm:
    """Who made the masks: model name, checkpoint sha256 (None for random or no weights), variant, the code version
    of the run (``runs.code_version``), the run's name, and whether its objects are marked research use."""

    model: str
    checkpoint_sha256: str | None
    variant: str
    version: str
    run: str = ""
    research_use: bool = True

    @property
    def device_uid(self) -> str:
        """A stable UID of the algorithm as a device: the same model and checkpoint give the same UID, in every
        run and process (IHE AIR's Device UID; the observer UID of the SRs)."""
        from pydicom.uid import generate_uid

        return str(generate_uid(entropy_srcs=["pixelperfect-device", self.model, self.checkpoint_sha256 or "none"]))

    def software_versions(self) -> list[str]:
        """Software Versions (LO, 64 chars a value): the code version, then the checkpoint sha256 as a value of its
        own."""
        return [self.version[:64], self.checkpoint_sha256 or "no-checkpoint"]

    def description(self, what: str) -> str:
        """Series description (LO, 64 chars): ``RESEARCH USE ONLY PixelPerfect SEG <variant>`` when marked."""
        text = f"PixelPerfect {what} {self.variant}" if self.variant else f"PixelPerfect {what}"
        return (f"{RESEARCH_USE} {text}" if self.research_use else text)[:64]

    def comment(self) -> str:
        """What a reader is told about the object (a comment, the contribution description)."""
        mark = f"{RESEARCH_USE}, not for clinical use. " if self.research_use else ""
        return f"{mark}Made by {self.model} ({self.variant or 'all variants'}) in PixelPerfect run {self.run!r}."


def contributing_equipment(algorithm: SegAlgorithm) -> Any:
    """IHE AI Results (AIR): the Contributing Equipment Sequence item naming the producer of an AI result —
    manufacturer PixelPerfect, model name the model, Software Versions the code version and the checkpoint sha256,
    Device UID stable per model and checkpoint, purpose DCM 109102 "Processing Equipment"."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    item = hd.ContributingEquipment(
        MANUFACTURER,
        codes.DCM.ProcessingEquipment,
        manufacturer_model_name=algorithm.model[:64],
        software_versions=algorithm.software_versions(),
        contribution_description=algorithm.comment()[:1024],
    )
    item.DeviceUID = algorithm.device_uid
    return item


def seg_uids(run: str, image_key: str, variant: str, study_uid: str) -> tuple[str, str]:
    """``(SeriesInstanceUID, SOPInstanceUID)`` of the SEG: deterministic in (run, study, variant) and (run, image,
    variant)."""
    from pydicom.uid import generate_uid

    series = generate_uid(entropy_srcs=["pixelperfect-seg-series", run, study_uid, variant])
    sop = generate_uid(entropy_srcs=["pixelperfect-seg", run, image_key, variant])
    return str(series), str(sop)


def read_source_header(data: bytes) -> Any:
    """The source instance's attributes without its pixel data (pydicom ``Dataset``)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    except (InvalidDicomError, EOFError, ValueError, TypeError) as exc:
        raise SegBuildError(f"source is not a DICOM file: {type(exc).__name__}: {exc}") from None
    for keyword in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Rows", "Columns"):
        if keyword not in ds:
            raise SegBuildError(f"source DICOM lacks {keyword}")
    return ds


def decode_mask_png(data: bytes) -> np.ndarray:
    """A stored mask PNG -> (H, W) bool."""
    import cv2

    mask = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise SegBuildError("a mask PNG does not decode")
    return np.asarray(mask > 0)


def build_seg(
    source: Any,
    masks: Sequence[np.ndarray],
    algorithm: SegAlgorithm,
    *,
    run: str,
    image_key: str,
) -> tuple[str, bytes]:
    """``(SOPInstanceUID, Part 10 bytes)`` of the SEG of ``masks`` on ``source`` (DICOM file bytes, or its header
    from :func:`read_source_header`, which is not modified).

    ``masks``: one (H, W) bool array per prompt, prompt order; masks at another resolution than the source's
    (a reduced-resolution decode) are resized to Rows x Columns with nearest-neighbour. Raises
    :class:`SegBuildError` when the SEG cannot be built (the caller records it; masks stay valid).
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    if not masks:
        raise SegBuildError("no segment: an image without prompts has no SEG")
    ds = read_source_header(source) if isinstance(source, bytes) else copy.copy(source)
    rows, cols = int(ds.Rows), int(ds.Columns)
    pixels = _pixel_array([_at_source_size(np.asarray(m, dtype=bool), rows, cols) for m in masks])
    for keyword in _TYPE2:
        if keyword not in ds:
            setattr(ds, keyword, "")
    family = codes.cid7162.ArtificialIntelligence
    ident = hd.AlgorithmIdentificationSequence(
        name=f"{algorithm.model} {algorithm.variant}"[:64],
        family=family,
        version=(algorithm.checkpoint_sha256 or "no-checkpoint")[:64],
        parameters={
            "variant": algorithm.variant,
            "checkpoint_sha256": algorithm.checkpoint_sha256 or "none",
            "run": algorithm.run,
            "code_version": algorithm.version,
        },
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=i + 1,
            segment_label=f"{algorithm.variant} prompt {i}"[:64],
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Lesion,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=ident,
        )
        for i in range(len(masks))
    ]
    series_uid, sop_uid = seg_uids(run, image_key, algorithm.variant, str(ds.StudyInstanceUID))  # type: ignore[attr-defined]
    try:
        seg = hd.seg.Segmentation(
            source_images=[ds],
            pixel_array=pixels,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=series_uid,
            series_number=SERIES_NUMBER,
            sop_instance_uid=sop_uid,
            instance_number=1,
            manufacturer=MANUFACTURER,
            manufacturer_model_name=algorithm.model[:64],
            software_versions=algorithm.version[:64],
            device_serial_number="0",
            content_label="PIXELPERFECT",
            content_description=f"SAM masks, variant {algorithm.variant}"[:64],
            omit_empty_frames=False,  # one frame per prompt, even an empty mask: segment i is prompt i - 1
            contributing_equipment=[contributing_equipment(algorithm)],
            series_description=algorithm.description("SEG"),
        )
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise SegBuildError(f"highdicom refused the SEG: {type(exc).__name__}: {exc}") from None
    seg.SoftwareVersions = algorithm.software_versions()  # type: ignore[assignment]  # the sha256 a value of its own
    if algorithm.research_use:
        seg.ImageComments = algorithm.comment()[:10240]
    if "FrameOfReferenceUID" not in ds:  # Type 2C in the general image module without a frame of reference
        seg.PatientOrientation = ds.get("PatientOrientation", "")  # type: ignore[attr-defined]
    buf = io.BytesIO()
    seg.save_as(buf, enforce_file_format=True)
    return sop_uid, buf.getvalue()


def _pixel_array(masks: list[np.ndarray]) -> np.ndarray:
    """Masks that do not overlap (the common case) as one (H, W) label map, segment ``i + 1`` where mask ``i`` is
    set: highdicom checks a label map with one ``max`` instead of a sum over the segment axis, 2.5x faster for a
    1024² SEG of two segments, and writes the same frames. Overlapping masks as a (1, H, W, S) bool stack."""
    label = np.zeros(masks[0].shape, np.uint8 if len(masks) < 256 else np.uint16)
    for i, mask in enumerate(masks):
        if label[mask].any():
            return np.stack(masks, axis=-1)[None]
        label[mask] = i + 1
    return label


def _at_source_size(mask: np.ndarray, rows: int, cols: int) -> np.ndarray:
    if mask.ndim != 2:
        raise SegBuildError(f"a mask must be 2-D (H, W), got shape {mask.shape}")
    if mask.shape == (rows, cols):
        return mask
    import cv2

    resized = cv2.resize(mask.view(np.uint8), (cols, rows), interpolation=cv2.INTER_NEAREST)
    return np.asarray(resized > 0)
