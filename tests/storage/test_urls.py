"""Store URLs: one open_store for every kind of store."""

from __future__ import annotations

from pathlib import Path

import pytest

from pixelperfect.storage import (
    LocalStore,
    S3Store,
    open_store,
)


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
