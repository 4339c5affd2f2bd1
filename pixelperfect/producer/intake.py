"""What a submission reads before anything is registered: the source listing (object store prefix, manifest or
DICOMweb QIDO-RS), annotation boxes, points and the ground-truth mask index. Every failure is a
:class:`SubmitError` naming what could not be read."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pixelperfect.config import Settings
from pixelperfect.inputs.annotations import AnnotationError, parse_annotations, parse_exemplars, stem
from pixelperfect.inputs.sources import SourceListing, absolute_url, iter_manifest, list_image_keys, open_source
from pixelperfect.pipeline.prompt.auto import parse_points_csv
from pixelperfect.producer.pacs import PatientMatcher
from pixelperfect.producer.stream import KeyMatcher
from pixelperfect.storage import read_url


class SubmitError(ValueError):
    """A submission that cannot run; nothing was enqueued."""


def source_listing(
    source: str, manifest: str | None, settings: Settings, filters: Any, *, track_patients: bool
) -> SourceListing | None:
    """The listing of ``source`` (None when a manifest names the keys); ``track_patients`` keeps the hashed
    PatientID of each instance of a PACS for RSNA annotations."""
    if manifest:
        return None
    try:
        return SourceListing.open(source, settings, filters, track_patients=track_patients)
    except ValueError as exc:
        raise SubmitError(f"cannot list {source}: {exc}") from None


def box_matcher(annotations: str, fmt: str, settings: Settings, listing: SourceListing | None) -> Any:
    """Boxes by key or stem; for a PACS source with RSNA annotations, by hashed PatientID."""
    values = read_boxes(annotations, fmt, settings)
    if listing is not None and listing.track_patients:
        return PatientMatcher(values, listing)
    return KeyMatcher(values)


def list_keys(source: str, manifest: str | None, settings: Settings, listing: SourceListing | None) -> Iterator[str]:
    """The image keys to register, streamed: from the source's listing, or the manifest."""
    if listing is not None:
        try:
            yield from listing
        except OSError as exc:  # SourceUnavailableError, or an HTTP error such as 401
            raise SubmitError(f"cannot list {source}: {exc}") from None
        return
    assert manifest  # no listing: the manifest names the keys
    url = manifest if "://" in manifest else absolute_url(manifest)
    try:
        yield from iter_manifest(url, settings.s3_endpoint_url)
    except (OSError, KeyError) as exc:
        raise SubmitError(f"cannot read manifest {manifest}: {exc}") from None


def read_text(what: str, where: str, settings: Settings) -> str:
    try:
        url = where if "://" in where else absolute_url(where)
        return read_url(url, endpoint_url=settings.s3_endpoint_url).decode("utf-8-sig")
    except Exception as exc:
        raise SubmitError(f"cannot read {what} {where}: {exc}") from None


def read_boxes(where: str, fmt: str, settings: Settings) -> dict[str, list[list[float]]]:
    return parse_annotations(read_text("annotations", where, settings), fmt, where)


def read_exemplars(where: str, fmt: str, settings: Settings) -> dict[str, list[list[float]]]:
    """Concept exemplar boxes ``{key or stem: [[x1, y1, x2, y2, label], ...]}`` (``--exemplars``)."""
    text = read_text("exemplars", where, settings)
    try:
        return parse_exemplars(text, fmt, where)
    except AnnotationError as exc:
        raise SubmitError(str(exc)) from None


def read_points(where: str, settings: Settings) -> dict[str, list[list[float]]]:
    text = read_text("points", where, settings)
    try:
        return parse_points_csv(text, where)
    except ValueError as exc:
        raise SubmitError(str(exc)) from None


def mask_index(where: str, settings: Settings) -> dict[str, str]:
    """``{stem: mask URL}`` of the ground-truth masks (memory: one entry per mask, not per image)."""
    mask_store = open_source(where, settings.s3_endpoint_url)
    index: dict[str, str] = {}
    for key in list_image_keys(mask_store):
        index[stem(key)] = mask_store.url_for(key)  # as match_masks: the last mask listed for a stem wins
    return index
