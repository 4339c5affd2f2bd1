"""Security defaults: JSON-only messages (a pickle message is refused, never executed), no credentials in logs or
stored run configs, TLS (``rediss://``) with a password, object keys that cannot escape their store, and
decompression-bomb limits checked before any pixel is decoded."""

from __future__ import annotations

import datetime
import os
import time
import uuid
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.faults.conftest import FaultBed
from tests.faults.runs import audit_run, make_stack, submit_run, wait_drained, wait_for_log
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
    bed: FaultBed,
    tmp_path: Path,
) -> None:
    t0 = time.monotonic()
    redis_server = RedisServer(tmp_path / "redis", tls=make_tls(tmp_path / "tls"))
    redis_server.start()
    worker = None
    try:
        db_secret, aws_secret = "dbpw-" + uuid.uuid4().hex, "aws-" + uuid.uuid4().hex
        # trust authentication ignores the password, so the URL may carry one: it must never be written anywhere
        db_url = bed.pg_url.replace("postgres@", f"postgres:{db_secret}@")
        archive = bed.archive(n=4)
        stack = make_stack(
            bed.s3, bed.bucket, redis_server.url, db_url, broker_ssl_ca_certs=str(redis_server.tls["ca"])
        )  # type: ignore[index]
        stack.s3_env["AWS_SECRET_ACCESS_KEY"] = aws_secret  # moto accepts any key; the log must not show it
        worker = bed.start_worker(stack.env(), extra=["--loglevel", "DEBUG"])
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
        audit = audit_run(stack, bed.s3, "secure")
        assert audit.lost == 0 and audit.duplicates == 0 and audit.missing_objects == []

        engine = create_engine(bed.pg_url)
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
    bed.table.append(
        (
            "security (TLS broker, pickle message, secrets)",
            4,
            "1 pickle message; passwords in broker and DB URLs",
            audit.lost,
            audit.duplicates,
            time.monotonic() - t0,
        )
    )
