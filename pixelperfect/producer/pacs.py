"""A PACS as a run's source and target: attribute filters, annotations matched by PatientID, the archive options.

RSNA-format annotations name images by ``patientId`` (one image per patient there). An archive's key (DICOMweb or
DIMSE) is made of UIDs, so such rows are matched through the PatientID its listing returns for each instance (QIDO-RS,
or the study-level C-FIND): both sides are hashed
(:func:`~pixelperfect.pipeline.decode.dicom.hash_identifier`) as soon as they are read, and only hashes are compared and
held; no PatientID is stored or logged in clear. Other annotation rows match a key by its SOPInstanceUID (the key's
last part), like file stems.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Generic, TypeVar

from pixelperfect.inputs.sources import SourceListing
from pixelperfect.pipeline.decode.dicom import hash_identifier
from pixelperfect.storage import check_archive_url, is_archive_url

V = TypeVar("V")

__all__ = ["PatientMatcher", "archive_settings", "parse_filters"]


def parse_filters(texts: Sequence[str]) -> dict[str, list[str]]:
    """``["Modality=CR,DX", "BodyPartExamined=CHEST"]`` -> ``{"Modality": ["CR", "DX"], ...}``.

    Raises ``ValueError`` naming a filter that is not ``Keyword=value[,value…]`` or whose keyword is no DICOM
    attribute keyword."""
    from pydicom.datadict import tag_for_keyword

    out: dict[str, list[str]] = {}
    for text in texts:
        name, sep, values = text.partition("=")
        name = name.strip()
        accepted = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not name or not accepted:
            raise ValueError(f"--filter {text!r}: expected Keyword=value[,value...], e.g. Modality=CR,DX")
        if tag_for_keyword(name) is None:
            raise ValueError(f"--filter {text!r}: {name!r} is not a DICOM attribute keyword")
        out.setdefault(name, []).extend(accepted)
    return out


class PatientMatcher(Generic[V]):
    """Attaches values named by PatientID (RSNA ``patientId``) to archive keys, comparing hashes only. The first
    key listed for a patient takes the patient's value; same interface as
    :class:`~pixelperfect.producer.stream.KeyMatcher`."""

    def __init__(self, values: dict[str, V], listing: SourceListing) -> None:
        self.values = {hash_identifier(pid): value for pid, value in values.items()}
        self.listing = listing
        self._claimed: set[str] = set()
        self.matched = 0

    def match(self, keys: Iterable[str]) -> dict[str, V]:
        out: dict[str, V] = {}
        for key in keys:
            digest = self.listing.patient_hashes.pop(key, None)
            if digest is not None and digest in self.values and digest not in self._claimed:
                self._claimed.add(digest)
                out[key] = self.values[digest]
        self.matched += len(out)
        return out


OUTPUTS = ("png", "dicom-seg", "dicom-sr")


def archive_settings(
    source: str,
    outputs: Sequence[str],
    stow_to: str | None,
    filters: Sequence[str],
    research_use: bool = True,
) -> dict[str, Any]:
    """The run-config entries of the archive options (empty for a plain PNG run, so the config hash of runs
    created before these options existed is unchanged). ``dicom-sr`` implies ``dicom-seg`` (the SR measures the
    SEG's segments); ``research_use`` False is recorded (``"research_use": false``), the default is not. Raises
    ``ValueError`` naming a bad option."""
    chosen = [o.strip() for text in outputs for o in text.split(",") if o.strip()] or ["png"]
    for name in chosen:
        if name not in OUTPUTS:
            raise ValueError(f"--output {name!r}: choose from {', '.join(OUTPUTS)} (comma-separated)")
    if "png" not in chosen:
        raise ValueError("--output must include png: the masks are stored as PNG, DICOM-SEG is built from them")
    if "dicom-sr" in chosen and "dicom-seg" not in chosen:
        chosen.append("dicom-seg")
    out: dict[str, Any] = {}
    if not research_use:
        out["research_use"] = False
    if chosen != ["png"]:
        out["outputs"] = [o for o in OUTPUTS if o in chosen]
    if stow_to:
        if "dicom-seg" not in chosen:
            raise ValueError("--stow-to sends DICOM-SEG objects: add --output png,dicom-seg")
        try:  # a DICOMweb URL without credentials, or a DIMSE URL
            out["stow_to"] = check_archive_url(stow_to)
        except ValueError as exc:
            raise ValueError(f"--stow-to: {exc}") from None
    if filters:
        if not is_archive_url(source):
            raise ValueError(f"--filter applies to DICOM archives (dicomweb+http://…, dimse://…), not {source!r}")
        out["filters"] = parse_filters(filters)
    return out
