"""Store URLs: which store a URL names, opened by the one :func:`open_store`, and objects read by full URL."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from pixelperfect.storage.base import ObjectStore
from pixelperfect.storage.dicomweb import DicomwebStore, service_url
from pixelperfect.storage.dimse import DimseStore, parse_dimse_url
from pixelperfect.storage.local import LocalStore
from pixelperfect.storage.s3 import S3Store, make_s3_client

SCHEMES = ("s3", "file", "dicomweb", "dimse")
#: The schemes of DICOM archives: sources with attribute filters, targets of DICOM objects (SEG, SR, KOS).
ARCHIVE_SCHEMES = ("dicomweb", "dimse")


def parse_url(url: str) -> tuple[str, str, str]:
    """``(scheme, root, path)``: ``s3://b/p`` -> ``("s3", "b", "p")``; ``file://d`` -> ``("file", "", "d")``."""
    if url.startswith("s3://"):
        rest = url[5:]
        bucket, _, prefix = rest.partition("/")
        return "s3", bucket, prefix.strip("/")
    if url.startswith("file://"):
        return "file", "", url[7:] or "."
    if url.startswith(("dicomweb+http://", "dicomweb+https://")):
        return "dicomweb", "", url
    if url.startswith("dimse://"):
        return "dimse", "", url
    if "://" in url:
        raise ValueError(
            f"unsupported store URL {url!r}: use s3://bucket/prefix, file://dir, dicomweb+http://host/path or "
            "dimse://CALLED_AE@host:port"
        )
    return "file", "", url


def open_store(url: str, settings: Any = None, *, endpoint_url: str | None = None, probe: bool = False) -> ObjectStore:
    """The store rooted at ``url``: ``s3://``, ``file://`` (or a bare path), a ``dicomweb+http(s)://`` PACS or a
    ``dimse://CALLED_AE@HOST:PORT`` archive.

    ``settings`` (default: the process's) give the S3 endpoint, the DICOMweb credentials, our DIMSE AE title, and
    the archives' timeouts and retries;
    ``endpoint_url`` overrides the S3 endpoint (``PIXELPERFECT_S3_ENDPOINT_URL``); ``probe``: an S3 client that
    tries twice with a short connect timeout (preflight answers in a second, not after eight backed-off tries).
    Raises ``ValueError`` naming a URL no store serves."""
    scheme, bucket, path = parse_url(url)
    if scheme == "file":
        return LocalStore(path)
    if settings is None and (scheme in ARCHIVE_SCHEMES or endpoint_url is None):
        from pixelperfect.config import get_settings

        settings = get_settings()
    if scheme == "dicomweb":
        return DicomwebStore(url, settings)
    if scheme == "dimse":
        return DimseStore(url, settings)
    endpoint = endpoint_url if endpoint_url is not None else settings.s3_endpoint_url
    client = make_s3_client(endpoint, attempts=2, connect_timeout=3) if probe else None
    return S3Store(bucket, path, endpoint_url=endpoint, client=client)


def is_archive_url(url: str | None) -> bool:
    """Whether ``url`` names a DICOM archive (DICOMweb or DIMSE), which lists by attribute filters and takes
    DICOM objects; nothing is opened."""
    try:
        return bool(url) and parse_url(str(url))[0] in ARCHIVE_SCHEMES
    except ValueError:
        return False


def check_archive_url(url: str) -> str:
    """``url`` without a trailing slash if it names a DICOM archive that can be opened (a DICOMweb URL without
    credentials, a DIMSE URL with its AE title, host and port); ``ValueError`` naming the problem otherwise.
    Nothing is opened."""
    if not is_archive_url(url):
        raise ValueError(
            f"not a DICOM archive: {url!r} (dicomweb+http://HOST:PORT/PATH or dimse://CALLED_AE@HOST:PORT)"
        )
    if parse_url(url)[0] == "dimse":
        return parse_dimse_url(url).url
    service_url(url)
    return url.rstrip("/")


def split_object_url(url: str) -> tuple[str, str]:
    """``s3://b/dir/file.png`` -> (``s3://b/dir``, ``file.png``); the same for ``file://``."""
    head, _, name = url.rstrip("/").rpartition("/")
    if not name or head.endswith(":/") or head.endswith(":"):
        raise ValueError(f"not an object URL: {url!r}")
    return head, name


def read_url(url: str, *, endpoint_url: str | None = None, settings: Any = None) -> bytes:
    """The bytes of one object named by a full URL (a checkpoint, a ground-truth mask)."""
    if "://" not in url:
        return Path(url).expanduser().read_bytes()
    root, name = split_object_url(url)
    return open_store(root, settings, endpoint_url=endpoint_url).get(name)


def read_directory(
    url: str, wanted: Callable[[str], bool], *, endpoint_url: str | None = None, settings: Any = None
) -> dict[str, bytes]:
    """The files directly under a directory URL (a path, ``file://`` or an ``s3://`` prefix) whose base name
    ``wanted`` accepts, as ``{base name: bytes}`` (a model directory such as SAM 3's)."""
    store = open_store(url if "://" in url else str(Path(url).expanduser()), settings, endpoint_url=endpoint_url)
    names = [k for k in store.list() if "/" not in k and wanted(k)]
    return {name: store.get(name) for name in sorted(names)}
