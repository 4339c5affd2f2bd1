"""Where images come from: every image-like key under an ``s3://`` or ``file://`` prefix, or a manifest."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

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
