"""Key Object Selection documents (KOS, TID 2010) of ``pixelperfect review``, with highdicom. No I/O.

One KOS per study: the source images (and their SEGs) whose masks fall below the review's thresholds, titled
(113000, DCM, "Of Interest") — never a rejection title (113001 "Rejected for Quality Reasons", 113037–113039),
which make a PACS hide the images — with the reason as the document's description text. The evidence is headers
only (the instances' attributes, never their pixels). The observer is the algorithm as a device, like the SRs'.
"""

from __future__ import annotations

import copy
import io
from collections.abc import Sequence
from typing import Any

from pixelperfect.pipeline.output.dicomseg import _TYPE2, MANUFACTURER, SegAlgorithm, contributing_equipment

SERIES_NUMBER = 9903  # the KOS series of a run's review
#: The title of a review KOS: (113000, DCM, "Of Interest").
TITLE = ("113000", "DCM", "Of Interest")
#: Titles a review never uses: they make a PACS hide the images (PS3.16 CID 7010, IHE IOCM).
REJECTION_TITLES = frozenset({"113001", "113037", "113038", "113039"})


class KosBuildError(ValueError):
    """The KOS cannot be built (no object, objects of several studies, a header without UIDs)."""


def kos_uids(run: str, study_uid: str) -> tuple[str, str]:
    """``(SeriesInstanceUID, SOPInstanceUID)``: one per (run, study), so a review run again replaces it."""
    from pydicom.uid import generate_uid

    series = generate_uid(entropy_srcs=["pixelperfect-kos-series", run, study_uid])
    sop = generate_uid(entropy_srcs=["pixelperfect-kos", run, study_uid])
    return str(series), str(sop)


def build_kos(headers: Sequence[Any], reason: str, algorithm: SegAlgorithm) -> tuple[str, bytes]:
    """``(SOPInstanceUID, Part 10 bytes)`` of the KOS selecting ``headers`` (pydicom datasets of one study: the
    source images first, then their SEGs); ``reason`` is its description (the thresholds and what fell below)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    if not headers:
        raise KosBuildError("nothing to select")
    studies = {str(getattr(h, "StudyInstanceUID", "")) for h in headers}
    if len(studies) != 1 or "" in studies:
        raise KosBuildError(f"a KOS selects the objects of one study, got {len(studies)}")
    first = copy.copy(headers[0])
    for keyword in _TYPE2:
        if keyword not in first:
            setattr(first, keyword, "")
    evidence = [first, *headers[1:]]
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=algorithm.device_uid, name=algorithm.model[:64], manufacturer_name=MANUFACTURER,
        model_name=algorithm.model[:64],
    )  # fmt: skip
    observer = hd.sr.ObserverContext(observer_type=codes.cid270.Device, observer_identifying_attributes=device)
    title = hd.sr.CodedConcept(TITLE[0], TITLE[1], TITLE[2])
    series_uid, sop_uid = kos_uids(algorithm.run, studies.pop())
    text = (f"RESEARCH USE ONLY. {reason}" if algorithm.research_use else reason)[:1024]
    try:
        content = hd.ko.KeyObjectSelection(
            document_title=title, referenced_objects=evidence, observer_device_context=observer, description=text
        )
        kos = hd.ko.KeyObjectSelectionDocument(
            evidence=evidence,
            content=content,
            series_instance_uid=series_uid,
            series_number=SERIES_NUMBER,
            sop_instance_uid=sop_uid,
            instance_number=1,
            manufacturer=MANUFACTURER,
            contributing_equipment=[contributing_equipment(algorithm)],
        )
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise KosBuildError(f"highdicom refused the KOS: {type(exc).__name__}: {exc}") from None
    kos.SeriesDescription = algorithm.description("review")
    buf = io.BytesIO()
    kos.save_as(buf, enforce_file_format=True)
    return sop_uid, buf.getvalue()


__all__ = ["REJECTION_TITLES", "TITLE", "KosBuildError", "build_kos", "kos_uids"]
