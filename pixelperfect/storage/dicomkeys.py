"""What the two kinds of DICOM archive share (DICOMweb, :mod:`.dicomweb`, and DIMSE, :mod:`.dimse`): the image key
``StudyInstanceUID/SeriesInstanceUID/SOPInstanceUID``, the SOP classes that carry no image to segment, and the
error of an instance the archive no longer holds."""

from __future__ import annotations

import re

from pixelperfect.storage.base import InvalidKeyError, ObjectNotFoundError

#: SOP classes that carry no image to segment: segmentations, structured reports, presentation states, key
#: objects, encapsulated documents, RT plans and structures, waveforms, raw data and registrations.
NON_IMAGE_SOP_PREFIXES = (
    "1.2.840.10008.5.1.4.1.1.66",  # raw data, spatial registration, fiducials, SEG, surface SEG
    "1.2.840.10008.5.1.4.1.1.88.",  # SR, key object selection
    "1.2.840.10008.5.1.4.1.1.11.",  # presentation states
    "1.2.840.10008.5.1.4.1.1.104.",  # encapsulated PDF, CDA, STL
    "1.2.840.10008.5.1.4.1.1.481.2",  # RT dose
    "1.2.840.10008.5.1.4.1.1.481.3",  # RT structure set
    "1.2.840.10008.5.1.4.1.1.481.4",  # RT beams treatment record
    "1.2.840.10008.5.1.4.1.1.481.5",  # RT plan
    "1.2.840.10008.5.1.4.1.1.9.",  # waveforms
)
SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


class InstanceNotFoundError(ObjectNotFoundError):
    """The archive has no instance at the key (deleted between listing and retrieval)."""

    reason = "not_found"


def is_image_sop_class(sop_class: str | None) -> bool:
    """Whether instances of ``sop_class`` may hold an image to segment (an unknown or missing class may)."""
    return not (sop_class or "").startswith(NON_IMAGE_SOP_PREFIXES)


def is_uid(value: str) -> bool:
    return bool(_UID.match(value)) and len(value) <= 64


def split_key(key: str) -> tuple[str, str, str]:
    """``study/series/sop`` -> the three UIDs; raises :class:`~pixelperfect.storage.InvalidKeyError` otherwise."""
    parts = key.split("/")
    if len(parts) != 3 or not all(is_uid(p) for p in parts):
        raise InvalidKeyError(f"an archive key is StudyUID/SeriesUID/SOPInstanceUID, not {key[:200]!r}")
    return parts[0], parts[1], parts[2]
