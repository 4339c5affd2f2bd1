"""Object stores with one interface (:class:`ObjectStore`: bytes by key under a root URL), opened by one
:func:`open_store` from their URL:

- ``s3://bucket/prefix``: S3 or an S3-compatible server (MinIO, moto) through boto3 (:mod:`.s3`);
- ``file://relative/dir``, ``file:///absolute/dir`` or a bare path: a local directory (:mod:`.local`);
- ``dicomweb+http(s)://HOST:PORT/PATH``: a PACS over DICOMweb, QIDO-RS lists, WADO-RS reads, STOW-RS writes
  (:mod:`.dicomweb`);
- ``dimse://CALLED_AE@HOST:PORT``: a DICOM archive over DIMSE, C-FIND lists, C-GET reads, C-STORE writes
  (:mod:`.dimse`).

Keys are relative, ``/``-separated, validated against traversal (:mod:`.base`). Nothing outside this package
chooses between stores: every caller passes a URL to :func:`open_store`.
"""

from pixelperfect.storage.base import (
    IMAGE_SUFFIXES,
    MAX_KEY_BYTES,
    Entry,
    InvalidKeyError,
    ObjectNotFoundError,
    ObjectStore,
    SourceUnavailableError,
    UnsupportedObjectError,
    is_image_key,
    join_key,
    validate_key,
)
from pixelperfect.storage.local import LocalStore
from pixelperfect.storage.s3 import S3Store, make_s3_client
from pixelperfect.storage.urls import (
    check_archive_url,
    is_archive_url,
    open_store,
    parse_url,
    read_directory,
    read_url,
    split_object_url,
)

__all__ = [
    "IMAGE_SUFFIXES",
    "MAX_KEY_BYTES",
    "Entry",
    "InvalidKeyError",
    "LocalStore",
    "ObjectNotFoundError",
    "ObjectStore",
    "S3Store",
    "SourceUnavailableError",
    "UnsupportedObjectError",
    "check_archive_url",
    "is_archive_url",
    "is_image_key",
    "join_key",
    "make_s3_client",
    "open_store",
    "parse_url",
    "read_directory",
    "read_url",
    "split_object_url",
    "validate_key",
]
