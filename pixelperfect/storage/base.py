"""The store interface and its keys: :class:`ObjectStore` (bytes by key under one root URL), the errors every store
raises, and key validation. Keys are relative, ``/``-separated, at most :data:`MAX_KEY_BYTES` bytes, validated
against traversal."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

MAX_KEY_BYTES = 1024
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".tif", ".tiff")


class InvalidKeyError(ValueError):
    """An object key that could escape its store or is not a valid S3 key."""


class ObjectNotFoundError(KeyError):
    """No object at the key."""

    reason = "missing"  # the image's failure reason

    def __str__(self) -> str:
        return f"no object at {self.args[0]}"


class SourceUnavailableError(OSError):
    """The service holding the object did not answer (down, timing out, 5xx) after its retries."""

    reason = "source_unavailable"


class UnsupportedObjectError(Exception):
    """The store holds the object but will not hand it over in a form the worker reads (a DIMSE archive that cannot
    send it in a transfer syntax we decode, or whose SOP class is no X-ray image); ``reason`` is the image's
    failure reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def validate_key(key: str) -> str:
    """Return ``key`` if it is a safe relative key; raise :class:`InvalidKeyError` naming the problem."""
    if not isinstance(key, str) or not key:
        raise InvalidKeyError("object key is empty")
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        raise InvalidKeyError(f"object key longer than {MAX_KEY_BYTES} bytes: {key[:60]!r}...")
    if key.startswith("/") or key.startswith("\\") or (len(key) > 1 and key[1] == ":"):
        raise InvalidKeyError(f"object key must be relative, not absolute: {key!r}")
    if "\x00" in key or "\\" in key:
        raise InvalidKeyError(f"object key contains a NUL or backslash: {key!r}")
    if any(part in ("..", ".") for part in key.split("/")):
        raise InvalidKeyError(f"object key contains a '.' or '..' segment: {key!r}")
    return key


def join_key(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))


@dataclass(frozen=True)
class Entry:
    """One object a store lists for a run: its key, whether it holds an image to segment, and — where the store
    knows it (a PACS) — the PatientID it belongs to (hashed by whoever keeps it, never stored in clear)."""

    key: str
    image: bool = True
    patient_id: str | None = None


class ObjectStore(ABC):
    """Bytes by key under one root URL."""

    url: str
    #: The store's keys name instances by UID (a PACS): annotations by RSNA ``patientId`` match a key through the
    #: PatientID its listing carries (:attr:`Entry.patient_id`), not through the key's file stem.
    keys_by_uid: bool = False

    @abstractmethod
    def get(self, key: str) -> bytes: ...

    @abstractmethod
    def put(self, key: str, data: bytes, content_type: str | None = None) -> None: ...

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[str]:
        """Keys under ``prefix``, relative to the store root, in lexicographic order, fetched page by page."""

    def entries(self, filters: Mapping[str, Sequence[str]] | None = None) -> Iterator[Entry]:
        """Every object under the root, in key order, page by page, each marked image-like or not (a known image
        suffix, or none). Attribute ``filters`` (DICOM keyword -> accepted values) only a PACS can apply: elsewhere
        they raise ``ValueError``."""
        if filters:
            raise ValueError(
                f"attribute filters apply to DICOM archives (dicomweb+http://…, dimse://…), not {self.url}"
            )
        for key in self.list():
            yield Entry(key, image=is_image_key(key))

    def store(self, datasets: Sequence[Any]) -> dict[str, str]:
        """Send DICOM objects (pydicom datasets: SEG, SR, KOS, …) to the archive this store is, in one request or
        association; returns ``{SOPInstanceUID: why}`` of those the archive refused, and raises when the send as a
        whole failed after its retries. Only archives take objects: DICOMweb (STOW-RS) and DIMSE (C-STORE)."""
        raise NotImplementedError(
            f"{self.url} is no DICOM archive: send DICOM objects to dicomweb+http://… or dimse://…"
        )

    def header(self, key: str) -> Any:
        """The DICOM attributes of the object at ``key`` without its pixel data (a pydicom ``Dataset``): here read
        from the stored file with the parse stopped before the pixels; a DICOMweb archive answers from WADO-RS
        metadata instead, so no pixel data travels."""
        import io

        import pydicom

        return pydicom.dcmread(io.BytesIO(self.get(key)), stop_before_pixels=True)

    def url_for(self, key: str) -> str:
        return f"{self.url.rstrip('/')}/{validate_key(key)}"

    def delete_many(self, keys: Sequence[str]) -> int:
        """Delete the objects at ``keys`` (missing ones are no error); returns how many were asked for."""
        raise NotImplementedError(f"{type(self).__name__} cannot delete objects")


def is_image_key(key: str) -> bool:
    """Image-like keys: a known suffix, or no suffix at all (DICOM archives often have none)."""
    name = key.rsplit("/", 1)[-1]
    if name.startswith("."):
        return False
    return name.lower().endswith(IMAGE_SUFFIXES) or "." not in name
