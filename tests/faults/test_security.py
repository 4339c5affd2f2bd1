"""Security defaults: JSON-only messages (a pickle message is refused, never executed), no credentials in logs or
stored run configs, TLS (``rediss://``) with a password, object keys that cannot escape their store, and
decompression-bomb limits checked before any pixel is decoded."""

from __future__ import annotations

import datetime
import os
import ssl
import time
import tracemalloc
import uuid
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from pixelperfect.config import Settings
from tests.conftest import S3Server
from tests.faults import corpus
from tests.faults.runs import audit_run, make_archive, make_stack, submit_run, wait_drained, wait_for_log
from tests.faults.services import RedisServer


class Exploit:
    """Unpickling this calls ``os.mkdir(marker)``: proof that a worker executed a message's payload."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.mkdir, (str(self.marker),))


def make_tls(directory: Path) -> dict[str, Path]:
    """A CA and a server certificate for 127.0.0.1, made with ``cryptography`` (no openssl binary needed)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)

    def cert(subject: str, key, issuer: str, issuer_key, ca: bool):  # type: ignore[no-untyped-def]
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            import ipaddress

            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
            )
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_cert = cert("pixelperfect test CA", ca_key, "pixelperfect test CA", ca_key, True)
    server_cert = cert("127.0.0.1", server_key, "pixelperfect test CA", ca_key, False)
    files = {"ca": directory / "ca.pem", "cert": directory / "server.pem", "key": directory / "server.key"}
    files["ca"].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files["cert"].write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    files["key"].write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return files


@pytest.mark.integration
@pytest.mark.slow
def test_tls_broker_with_password_refuses_pickle_and_leaks_no_secret(
    tmp_path: Path,
    s3_server: S3Server,
    s3_bucket: str,
    pg_url: str,
    fault_phantoms: Path,
    tiny_checkpoint: Path,
    start_worker,
    fault_table,  # type: ignore[no-untyped-def]
) -> None:
    t0 = time.monotonic()
    redis_server = RedisServer(tmp_path / "redis", tls=make_tls(tmp_path / "tls"))
    redis_server.start()
    worker = None
    try:
        db_secret, aws_secret = "dbpw-" + uuid.uuid4().hex, "aws-" + uuid.uuid4().hex
        # trust authentication ignores the password, so the URL may carry one: it must never be written anywhere
        db_url = pg_url.replace("postgres@", f"postgres:{db_secret}@")
        archive = make_archive(s3_server, s3_bucket, fault_phantoms, tiny_checkpoint, n=4)
        stack = make_stack(
            s3_server, s3_bucket, redis_server.url, db_url, broker_ssl_ca_certs=str(redis_server.tls["ca"])
        )  # type: ignore[index]
        stack.s3_env["AWS_SECRET_ACCESS_KEY"] = aws_secret  # moto accepts any key; the log must not show it
        worker = start_worker(stack.env(), extra=["--loglevel", "DEBUG"])
        assert "rediss://:**@127.0.0.1" in worker.log.read_text()

        # a pickle message whose payload would create a directory if it were ever unpickled
        from kombu import Connection, Exchange, Queue

        from pixelperfect.worker.app import broker_ssl

        marker = tmp_path / "pwned"
        with Connection(redis_server.url, ssl=broker_ssl(stack.settings)) as conn:
            conn.Producer().publish(
                Exploit(marker),
                serializer="pickle",
                exchange=Exchange(""),
                routing_key="gpu",
                declare=[Queue("gpu")],
                headers={
                    "task": "pixelperfect.segment_batch",
                    "id": str(uuid.uuid4()),
                    "lang": "py",
                    "argsrepr": "",
                    "kwargsrepr": "",
                },
            )
        wait_for_log(worker.log, r"(?i)refusing to deserialize untrusted content of type pickle", timeout=30)
        time.sleep(0.5)
        assert not marker.exists(), "the worker unpickled a message"
        assert redis_server.backlog() == (0, 0), "the refused message was dropped, not redelivered forever"

        # the worker carries on with JSON messages: a real run over TLS
        submit_run(stack, archive, "secure", batch_size=2)
        status = wait_drained(db_url, "secure", [worker], timeout=60)
        assert status == {"queued": 0, "done": 4, "failed": 0}
        audit = audit_run(stack, s3_server, "secure")
        assert audit.lost == 0 and audit.duplicates == 0 and audit.missing_objects == []

        engine = create_engine(pg_url)
        with engine.connect() as conn:
            stored = "\n".join(str(r[0]) for r in conn.execute(text("SELECT row_to_json(t)::text FROM runs t")))
        engine.dispose()
        log = worker.log.read_text(errors="replace")
        for secret in (redis_server.password, db_secret, aws_secret):
            assert secret not in log, "a secret is in the worker log (DEBUG level)"
            assert secret not in stored, "a secret is in the stored run config"
    finally:
        if worker is not None:
            worker.stop()  # while its broker is up: without one, a worker's cold shutdown hangs on the broker
        redis_server.kill()
    fault_table.append(
        (
            "security (TLS broker, pickle message, secrets)",
            4,
            "1 pickle message; passwords in broker and DB URLs",
            audit.lost,
            audit.duplicates,
            time.monotonic() - t0,
        )
    )


def test_celery_settings_are_the_safe_ones() -> None:
    from pixelperfect.worker.app import make_celery

    settings = Settings(
        broker_url="redis://:pw@localhost:6379/0", visibility_timeout=7200, worker_soft_shutdown_timeout=45
    )
    conf = make_celery(settings).conf
    assert conf.accept_content == ["json"] and conf.task_serializer == "json" and conf.result_serializer == "json"
    assert conf.event_serializer == "json"
    assert conf.task_acks_late and conf.task_reject_on_worker_lost and conf.worker_prefetch_multiplier == 1
    assert conf.broker_transport_options["visibility_timeout"] == 7200
    assert conf.broker_transport_options["unacked_restore_interval"] == 60
    assert conf.worker_soft_shutdown_timeout == 45
    assert conf.worker_cancel_long_running_tasks_on_connection_loss
    assert conf.broker_use_ssl is None
    assert os.environ.get("REMAP_SIGTERM") == "SIGQUIT"  # SIGTERM -> cold shutdown with the soft phase


def test_rediss_urls_take_tls_options_and_hide_the_password() -> None:
    from pixelperfect.worker.app import make_celery

    settings = Settings(
        broker_url="rediss://:s3cret@redis.internal:6380/0",
        broker_ssl_ca_certs="/etc/ca.pem",
        broker_ssl_certfile="/etc/client.pem",
        broker_ssl_keyfile="/etc/client.key",
    )
    app = make_celery(settings)
    assert app.conf.broker_use_ssl == {
        "ssl_cert_reqs": ssl.CERT_REQUIRED,
        "ssl_ca_certs": "/etc/ca.pem",
        "ssl_certfile": "/etc/client.pem",
        "ssl_keyfile": "/etc/client.key",
    }
    assert "s3cret" not in app.connection_for_write().as_uri()
    none = make_celery(Settings(broker_url="rediss://h:6380/0", broker_ssl_cert_reqs="none")).conf.broker_use_ssl
    assert none == {"ssl_cert_reqs": ssl.CERT_NONE}
    with pytest.raises(ValueError, match="broker_ssl_cert_reqs"):
        Settings(broker_ssl_cert_reqs="maybe")  # type: ignore[arg-type]


def test_visibility_timeout_must_exceed_the_longest_retry_countdown() -> None:
    with pytest.raises(ValueError, match="visibility_timeout=30s must exceed"):
        Settings(visibility_timeout=30, retry_backoff_s=10, task_max_retries=3)  # last countdown 40 s
    assert Settings(visibility_timeout=41, retry_backoff_s=10, task_max_retries=3).visibility_timeout == 41


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


def test_decompression_bomb_is_refused_from_its_header() -> None:
    from pixelperfect.pipeline.decode.reader import UnsupportedImageError, decode_image

    bomb = corpus.png_bomb(10_000)  # ~100 KiB that would inflate to 100 MB
    tracemalloc.start()
    start = time.perf_counter()
    with pytest.raises(UnsupportedImageError) as info:
        decode_image(bomb, "bomb.png", max_pixels=50_000_000)
    elapsed = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert info.value.reason == "too_large" and elapsed < 0.5 and peak < 5_000_000, (elapsed, peak)
    for data, key in (
        (corpus.png_claiming(60000, 60000), "h.png"),
        (corpus.jpeg_claiming(65000, 65000), "h.jpg"),
        (corpus.tiff_claiming(100000, 100000), "h.tif"),
        (corpus.dicom(Rows=60000, Columns=60000), "h.dcm"),
    ):
        with pytest.raises(UnsupportedImageError, match="too_large"):
            decode_image(data, key)
