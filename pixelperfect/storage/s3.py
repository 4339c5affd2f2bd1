"""S3 and S3-compatible servers (AWS, MinIO, moto) as an object store, through boto3 (``s3://bucket/prefix``)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from pixelperfect.storage.base import ObjectNotFoundError, ObjectStore, join_key, validate_key


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


def make_s3_client(endpoint_url: str | None = None, *, attempts: int = 8, connect_timeout: float = 10) -> Any:
    """A boto3 S3 client that works with AWS and S3-compatible servers.

    Path-style addressing (MinIO and moto serve buckets on the path), the standard retry mode (exponential
    backoff on 5xx, throttling and connection errors), and checksums only when an operation requires them:
    botocore >= 1.36 otherwise adds CRC trailers that several S3-compatible servers reject. ``attempts`` and
    ``connect_timeout``: fewer and shorter for a preflight probe.
    """
    import boto3
    from botocore.config import Config

    config = Config(
        s3={"addressing_style": "path"},
        retries={"mode": "standard", "max_attempts": attempts},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        connect_timeout=connect_timeout,
        read_timeout=60,
        max_pool_connections=32,
    )
    return boto3.client("s3", endpoint_url=endpoint_url, config=config)
