"""The store interface: keys validated against traversal, and the same behaviour from a directory and from S3."""

from __future__ import annotations

from pathlib import Path

import pytest

from pixelperfect.storage import (
    InvalidKeyError,
    LocalStore,
    ObjectNotFoundError,
    S3Store,
    is_image_key,
    open_store,
    read_url,
    validate_key,
)
from tests.conftest import S3Server


@pytest.mark.parametrize("key", ["", "/etc/passwd", "a/../b", "../x", "a/./b", "a\\b", "x" * 1025, "C:/x", "a\x00b"])
def test_invalid_keys_are_refused_with_a_clear_error(key: str) -> None:
    with pytest.raises(InvalidKeyError):
        validate_key(key)


def test_valid_keys_pass() -> None:
    assert validate_key("run/masks/images/a.png/raw/0.png") == "run/masks/images/a.png/raw/0.png"
    assert validate_key("é" * 512) == "é" * 512  # 1024 bytes exactly


def _exercise(store, endpoint: str | None = None) -> None:  # type: ignore[no-untyped-def]
    assert not store.exists("a/b.png")
    store.put("a/b.png", b"one", "image/png")
    store.put("a/c.png", b"two")
    store.put("z.txt", b"three")
    assert store.exists("a/b.png") and store.get("a/c.png") == b"two"
    assert list(store.list()) == ["a/b.png", "a/c.png", "z.txt"]
    assert list(store.list("a/")) == ["a/b.png", "a/c.png"]
    with pytest.raises(ObjectNotFoundError):
        store.get("missing.png")
    with pytest.raises(InvalidKeyError):
        store.put("../escape", b"x")
    assert read_url(store.url_for("a/b.png"), endpoint_url=endpoint) == b"one"


def test_local_store(tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path}/root")
    assert isinstance(store, LocalStore)
    _exercise(store)
    assert not list((tmp_path / "root" / "a").glob(".tmp-*"))


@pytest.mark.integration
def test_s3_store_over_http(s3_server: S3Server, s3_bucket: str) -> None:
    store = open_store(f"s3://{s3_bucket}/pre/fix", endpoint_url=s3_server.endpoint)
    assert isinstance(store, S3Store)
    _exercise(store, s3_server.endpoint)
    assert read_url(f"s3://{s3_bucket}/pre/fix/z.txt", endpoint_url=s3_server.endpoint) == b"three"


@pytest.mark.integration
def test_s3_listing_is_paginated(s3_server: S3Server, s3_bucket: str) -> None:
    store = S3Store(s3_bucket, "many", endpoint_url=s3_server.endpoint)
    store.PAGE_SIZE = 7  # type: ignore[misc]
    for i in range(23):
        store.put(f"k{i:03d}.png", b"x")
    assert list(store.list()) == [f"k{i:03d}.png" for i in range(23)]


def test_image_keys() -> None:
    assert is_image_key("a/b.PNG") and is_image_key("x/1.2.840.dcm") and is_image_key("dicom/0001")
    assert not is_image_key("labels.csv") and not is_image_key("a/.hidden")


@pytest.mark.parametrize(
    "key", ["../etc/passwd", "a/../../b.png", "/abs.png", "a/./b.png", "a\\..\\b", "x\x00.png", "C:/win.png", ""]
)
def test_object_keys_cannot_escape_their_store(tmp_path: Path, key: str) -> None:
    from pixelperfect.storage import InvalidKeyError, LocalStore, S3Store

    store = LocalStore(tmp_path / "root")
    with pytest.raises(InvalidKeyError):
        store.put(key, b"x")
    with pytest.raises(InvalidKeyError):
        store.get(key)

    class NoRequests:
        def get_object(self, **_: object) -> None:
            raise AssertionError("a request was made for an invalid key")

        put_object = get_object

    s3 = S3Store("bucket", "prefix", client=NoRequests())
    with pytest.raises(InvalidKeyError):
        s3.get(key)
    with pytest.raises(InvalidKeyError):
        s3.put(key, b"x")
    assert not any(p.is_file() for p in tmp_path.rglob("*"))
