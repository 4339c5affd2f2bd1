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


def test_open_store_is_the_one_dispatch(tmp_path: Path) -> None:
    """One function opens every store by its URL, a PACS included (no request is made until it is used)."""
    from pixelperfect.config import Settings
    from pixelperfect.storage.dicomweb import DicomwebStore

    settings = Settings(s3_endpoint_url="http://127.0.0.1:1")
    assert isinstance(open_store(str(tmp_path), settings), LocalStore)
    s3 = open_store("s3://bucket/pre", settings)
    assert isinstance(s3, S3Store) and s3.endpoint_url == "http://127.0.0.1:1"
    assert open_store("s3://bucket/pre", settings, endpoint_url="http://other:9").endpoint_url == "http://other:9"
    pacs = open_store("dicomweb+http://127.0.0.1:8042/dicom-web/", settings)
    assert isinstance(pacs, DicomwebStore) and pacs.url == "dicomweb+http://127.0.0.1:8042/dicom-web"
    assert pacs.keys_by_uid and not s3.keys_by_uid
    with pytest.raises(ValueError, match="credentials"):
        open_store("dicomweb+http://user:secret@127.0.0.1:8042/dicom-web", settings)
    with pytest.raises(ValueError, match="unsupported store URL"):
        open_store("ftp://host/dir", settings)


def test_a_listing_streams_image_keys_and_counts_the_rest(tmp_path: Path) -> None:
    """The producer's listing of an object store: image-like keys in order, other objects counted as skipped, no
    patient tracking (file keys match annotations by stem), attribute filters refused."""
    from pixelperfect.inputs.sources import SourceListing

    store = LocalStore(tmp_path)
    for key in ("b/2.dcm", "a/1.png", "labels.csv", "c/1.2.840.5", ".hidden.png"):
        store.put(key, b"x")
    listing = SourceListing(store, track_patients=True)
    assert list(listing) == ["a/1.png", "b/2.dcm"]
    assert listing.skipped == 3 and not listing.track_patients and listing.patient_hashes == {}
    with pytest.raises(ValueError, match="attribute filters apply to DICOMweb sources"):
        list(SourceListing(store, {"Modality": ["CR"]}))
