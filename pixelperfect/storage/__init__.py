"""Object stores with one interface: S3 (AWS, MinIO, moto) through boto3, and a local directory.

URLs: ``s3://bucket/prefix`` or ``file://relative/dir`` / ``file:///absolute/dir`` (a bare path is a local
directory too). Keys are relative, ``/``-separated, validated against traversal.
"""

from __future__ import annotations

import os
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from pathlib import Path
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


class ObjectStore(ABC):
    """Bytes by key under one root URL."""

    url: str

    @abstractmethod
    def get(self, key: str) -> bytes: ...

    @abstractmethod
    def put(self, key: str, data: bytes, content_type: str | None = None) -> None: ...

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[str]:
        """Keys under ``prefix``, relative to the store root, in lexicographic order, fetched page by page."""

    def url_for(self, key: str) -> str:
        return f"{self.url.rstrip('/')}/{validate_key(key)}"

    def delete_many(self, keys: Sequence[str]) -> int:
        """Delete the objects at ``keys`` (missing ones are no error); returns how many were asked for."""
        raise NotImplementedError(f"{type(self).__name__} cannot delete objects")


class LocalStore(ObjectStore):
    """A directory. Writes are atomic (temporary file, then rename), so a reader never sees half a mask."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()
        self.url = f"file://{self.root}"

    def _path(self, key: str) -> Path:
        return self.root / validate_key(key)

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFoundError(self.url_for(key)) from None

    def put(self, key: str, data: bytes, content_type: str | None = None) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete_many(self, keys: Sequence[str]) -> int:
        """Unlink the files, then the directories the deletions left empty (never the root)."""
        parents = set()
        for key in keys:
            path = self._path(key)
            path.unlink(missing_ok=True)
            parents.add(path.parent)
        for parent in sorted(parents, key=lambda p: len(p.parts), reverse=True):
            while parent != self.root and self.root in parent.parents:
                try:
                    parent.rmdir()
                except OSError:  # not empty (or gone): stop climbing
                    break
                parent = parent.parent
        return len(keys)

    def list(self, prefix: str = "") -> Iterator[str]:
        if prefix:
            validate_key(prefix.rstrip("/") or ".x")
        yield from (key for key in self._walk(self.root, "") if key.startswith(prefix))

    def _walk(self, directory: Path, rel: str) -> Iterator[str]:
        """Keys in lexicographic order, like S3: a directory sorts as its name plus '/'."""
        try:
            entries = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError):
            return
        named = sorted((e.name + ("/" if e.is_dir() else ""), e) for e in entries if not e.name.startswith(".tmp-"))
        for name, entry in named:
            if name.endswith("/"):
                yield from self._walk(Path(entry.path), rel + name)
            else:
                yield rel + name


class S3Store(ObjectStore):
    """A bucket and key prefix on S3 or an S3-compatible server."""

    PAGE_SIZE = 1000

    def __init__(self, bucket: str, prefix: str = "", *, endpoint_url: str | None = None, client: Any = None):
        if not bucket:
            raise ValueError("s3 URL needs a bucket: s3://bucket/prefix")
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.url = f"s3://{bucket}/{self.prefix}".rstrip("/")
        self.endpoint_url = endpoint_url
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = make_s3_client(self.endpoint_url)
        return self._client

    def _key(self, key: str) -> str:
        return join_key(self.prefix, validate_key(key))

    def get(self, key: str) -> bytes:
        from botocore.exceptions import ClientError

        try:
            return bytes(self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read())
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                raise ObjectNotFoundError(self.url_for(key)) from None
            raise

    def put(self, key: str, data: bytes, content_type: str | None = None) -> None:
        extra = {"ContentType": content_type} if content_type else {}
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, **extra)

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                return False
            raise

    #: S3's ``DeleteObjects`` takes at most this many keys per request.
    DELETE_BATCH = 1000

    def delete_many(self, keys: Sequence[str]) -> int:
        """``DeleteObjects`` in requests of :data:`DELETE_BATCH` keys (quiet mode: only errors come back); raises
        ``RuntimeError`` naming the first key S3 refused."""
        for start in range(0, len(keys), self.DELETE_BATCH):
            objects = [{"Key": self._key(k)} for k in keys[start : start + self.DELETE_BATCH]]
            reply = self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": objects, "Quiet": True})
            errors = reply.get("Errors") or []
            if errors:
                first = errors[0]
                raise RuntimeError(
                    f"S3 refused to delete {len(errors)} object(s), e.g. {first.get('Key')}: "
                    f"{first.get('Code')} {first.get('Message')}"
                )
        return len(keys)

    def list(self, prefix: str = "") -> Iterator[str]:
        full = join_key(self.prefix, prefix)
        if full and (prefix.endswith("/") or not prefix):
            full += "/"
        strip = len(self.prefix) + 1 if self.prefix else 0
        paginator = self.client.get_paginator("list_objects_v2")
        pages = paginator.paginate(Bucket=self.bucket, Prefix=full, PaginationConfig={"PageSize": self.PAGE_SIZE})
        for page in pages:
            for obj in page.get("Contents", []):
                yield obj["Key"][strip:]


def make_s3_client(endpoint_url: str | None = None) -> Any:
    """A boto3 S3 client that works with AWS and S3-compatible servers.

    Path-style addressing (MinIO and moto serve buckets on the path), the standard retry mode (exponential
    backoff on 5xx, throttling and connection errors), and checksums only when an operation requires them:
    botocore >= 1.36 otherwise adds CRC trailers that several S3-compatible servers reject.
    """
    import boto3
    from botocore.config import Config

    config = Config(
        s3={"addressing_style": "path"},
        retries={"mode": "standard", "max_attempts": 8},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        connect_timeout=10,
        read_timeout=60,
        max_pool_connections=32,
    )
    return boto3.client("s3", endpoint_url=endpoint_url, config=config)


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
    if "://" in url:
        raise ValueError(
            f"unsupported store URL {url!r}: use s3://bucket/prefix, file://dir or dicomweb+http://host/path"
        )
    return "file", "", url


def open_store(url: str, *, endpoint_url: str | None = None) -> ObjectStore:
    """The store rooted at ``url``. ``endpoint_url`` defaults to ``PIXELPERFECT_S3_ENDPOINT_URL``."""
    scheme, bucket, path = parse_url(url)
    if scheme == "s3":
        if endpoint_url is None:
            from pixelperfect.config import get_settings

            endpoint_url = get_settings().s3_endpoint_url
        return S3Store(bucket, path, endpoint_url=endpoint_url)
    if scheme == "dicomweb":  # a layer above this one: the worker's runtime opens it (pixelperfect.storage.dicomweb)
        raise ValueError(f"{url}: a DICOMweb service is opened with pixelperfect.storage.dicomweb.DicomwebStore")
    return LocalStore(path)


def split_object_url(url: str) -> tuple[str, str]:
    """``s3://b/dir/file.png`` -> (``s3://b/dir``, ``file.png``); the same for ``file://``."""
    head, _, name = url.rstrip("/").rpartition("/")
    if not name or head.endswith(":/") or head.endswith(":"):
        raise ValueError(f"not an object URL: {url!r}")
    return head, name


def read_url(url: str, *, endpoint_url: str | None = None) -> bytes:
    """The bytes of one object named by a full URL (a checkpoint, a ground-truth mask)."""
    if "://" not in url:
        return Path(url).expanduser().read_bytes()
    root, name = split_object_url(url)
    return open_store(root, endpoint_url=endpoint_url).get(name)


def is_image_key(key: str) -> bool:
    """Image-like keys: a known suffix, or no suffix at all (DICOM archives often have none)."""
    name = key.rsplit("/", 1)[-1]
    if name.startswith("."):
        return False
    return name.lower().endswith(IMAGE_SUFFIXES) or "." not in name
