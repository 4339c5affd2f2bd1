"""Where images come from: every image-like key under a source (``s3://`` or ``file://`` prefix, a
``dicomweb+http(s)://`` PACS with attribute filters), or a manifest."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from pixelperfect.storage import ObjectStore, is_image_key, open_store, parse_url, read_url


def absolute_url(url: str) -> str:
    """``file://`` URLs and bare paths made absolute, so a worker in another directory reads the same files."""
    scheme, _, path = parse_url(url)
    if scheme == "file":
        return f"file://{Path(path).expanduser().resolve()}"
    return url.rstrip("/")


def list_image_keys(store: ObjectStore, prefix: str = "") -> Iterator[str]:
    """Image-like keys (known suffix or none) under ``prefix``, paginated by the store, in key order."""
    for key in store.list(prefix):
        if is_image_key(key):
            yield key


def iter_manifest(url: str, endpoint_url: str | None = None) -> Iterator[str]:
    """The keys of a manifest (path or URL), lazily: a local file is read line by line, so a manifest of millions
    of keys (an S3 Inventory export, a CSV's key column) costs no more memory than one line; a remote one is one
    object in memory. Keys are relative to the run's source."""
    scheme, _, path = parse_url(url)
    if scheme == "file":
        with open(Path(path).expanduser(), encoding="utf-8-sig") as fh:
            yield from _manifest_keys(fh)
        return
    yield from _manifest_keys(read_url(url, endpoint_url=endpoint_url).decode("utf-8-sig").splitlines())


def _manifest_keys(lines: Iterable[str]) -> Iterator[str]:
    for line in lines:
        key = line.strip()
        if key and not key.startswith("#"):
            yield key


def open_source(url: str, endpoint_url: str | None = None) -> ObjectStore:
    return open_store(absolute_url(url), endpoint_url=endpoint_url)


class SourceListing:
    """The image keys of a source store, streamed page by page as the store lists them (non-image objects are
    counted in :attr:`skipped`). Where the store's keys name instances by UID (a PACS) and ``track_patients`` is
    set, the hashed PatientID of each listed key is kept until a matcher consumes it (memory: one chunk's keys);
    no PatientID is held in clear."""

    def __init__(
        self, store: ObjectStore, filters: Mapping[str, Sequence[str]] | None = None, *, track_patients: bool = False
    ) -> None:
        self.store = store
        self.filters = dict(filters or {})
        self.track_patients = track_patients and store.keys_by_uid
        self.patient_hashes: dict[str, str] = {}
        self.skipped = 0  # objects that are no image: SEG, SR, presentation states, a labels.csv, ...

    @classmethod
    def open(
        cls,
        url: str,
        settings: Any,
        filters: Mapping[str, Sequence[str]] | None = None,
        *,
        track_patients: bool = False,
    ) -> SourceListing:
        """The listing of the source at ``url`` (opened with ``settings``: S3 endpoint, DICOMweb credentials)."""
        return cls(open_store(absolute_url(url), settings), filters, track_patients=track_patients)

    def __iter__(self) -> Iterator[str]:
        from pixelperfect.pipeline.decode.dicom import hash_identifier  # numpy and pydicom only when listing

        for entry in self.store.entries(self.filters):
            if not entry.image:
                self.skipped += 1
                continue
            if self.track_patients and entry.patient_id:
                self.patient_hashes[entry.key] = hash_identifier(entry.patient_id)
            yield entry.key
