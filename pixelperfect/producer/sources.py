"""Where images come from: every image-like key under an ``s3://`` or ``file://`` prefix, or a manifest."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from pixelperfect.storage import ObjectStore, is_image_key, open_store, parse_url


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


def read_manifest(text: str) -> list[str]:
    """A manifest: one key per line; blank lines and ``#`` comments ignored."""
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def open_source(url: str, endpoint_url: str | None = None) -> ObjectStore:
    return open_store(absolute_url(url), endpoint_url=endpoint_url)
