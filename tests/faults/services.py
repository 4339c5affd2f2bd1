"""Services a fault test owns: a Redis server it may crash and restart, and a fault-injecting HTTP proxy in front
of the S3 server."""

from __future__ import annotations

import http.client
import random
import secrets
import socket
import struct
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tests.conftest import free_port

QUEUE = "gpu"


# --- a Redis server of the test's own ---------------------------------------------------------------------------


class RedisServer:
    """``redis-server`` on a private loopback port, with a password, that the test may kill and restart.

    Persistence: append-only file with ``appendfsync always`` and no RDB snapshots. A broker restart must not
    lose queued batches; with the AOF every publish that Redis acknowledged survives a crash (production may use
    ``everysec``: at most a second of publishes at risk, and re-submitting the run re-enqueues whatever is still
    queued in the database).
    """

    def __init__(self, workdir: Path, *, password: str | None = None, tls: dict[str, Path] | None = None) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.password = password if password is not None else "pw-" + secrets.token_hex(12)
        self.tls = tls
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    @property
    def url(self) -> str:
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://:{self.password}@127.0.0.1:{self.port}/0"

    def start(self) -> None:
        cmd = [
            "redis-server",
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--dir",
            str(self.workdir),
            "--logfile",
            str(self.workdir / "redis.log"),
            "--requirepass",
            self.password,
        ]
        if self.tls:
            cmd += [
                "--port",
                "0",
                "--tls-port",
                str(self.port),
                "--tls-cert-file",
                str(self.tls["cert"]),
                "--tls-key-file",
                str(self.tls["key"]),
                "--tls-ca-cert-file",
                str(self.tls["ca"]),
                "--tls-auth-clients",
                "no",
            ]
        else:
            cmd += ["--port", str(self.port)]
        self.proc = subprocess.Popen(cmd, start_new_session=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    pass
                if self.client().ping():
                    return
            except Exception:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def kill(self) -> None:
        """SIGKILL: a crash, not a clean shutdown."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def restart(self, down_s: float = 1.0) -> None:
        self.kill()
        time.sleep(down_s)
        self.start()
        self.restarts += 1

    def client(self) -> Any:
        import redis

        tls = {"ssl": True, "ssl_ca_certs": str(self.tls["ca"])} if self.tls else {}
        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password, socket_timeout=5, **tls)

    def backlog(self) -> tuple[int, int]:
        """(messages waiting in the queue, messages delivered but not acknowledged)."""
        c = self.client()
        return int(c.llen(QUEUE)), int(c.hlen("unacked"))


# --- a fault-injecting HTTP proxy in front of the S3 server ----------------------------------------------------

_S3_ERRORS = {
    "500": (500, "InternalError", "We encountered an internal error. Please try again."),
    "503": (503, "ServiceUnavailable", "Please reduce your request rate."),
    "slowdown": (503, "SlowDown", "Please reduce your request rate."),
}
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "trailer", "upgrade"}


@dataclass
class FaultPolicy:
    """Which requests fail and how. ``kinds``: any of 500, 503, slowdown, stall, reset, reset_after, truncate.

    ``reset`` drops the connection before forwarding; ``reset_after`` forwards (the write happens) and drops the
    response; ``truncate`` sends half of a GET body and closes (botocore does not retry a broken body stream,
    so that is a task retry); ``stall`` waits ``stall_s`` and then answers.
    """

    rate: float = 0.0
    kinds: tuple[str, ...] = ("500", "503", "slowdown", "stall", "reset", "reset_after", "truncate")
    stall_s: float = 1.0
    match: Callable[[str, str], bool] | None = None  # (method, path) -> eligible for a fault
    forced: list[str] = field(default_factory=list)  # faults for the first eligible requests, before random ones
    on_request: Callable[[str, str], None] | None = None  # called with (method, path) before anything else


class FaultProxy:
    """A threaded HTTP server that forwards to ``upstream`` and injects faults (counted per kind)."""

    def __init__(self, upstream: str, seed: int = 0) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.policy = FaultPolicy()
        self.counts: Counter[str] = Counter()
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                proxy._handle(self)

            do_PUT = do_POST = do_HEAD = do_DELETE = do_GET

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _choose(self, method: str, path: str) -> str | None:
        policy = self.policy
        with self._lock:
            self.counts["requests"] += 1
            if policy.match is not None and not policy.match(method, path):
                return None
            if policy.forced and (policy.forced[0] != "truncate" or method == "GET"):
                kind: str | None = policy.forced.pop(0)
            elif policy.rate <= 0 or self._rng.random() >= policy.rate:
                return None
            else:
                kinds = [k for k in policy.kinds if k != "truncate" or method == "GET"]
                kind = self._rng.choice(kinds) if kinds else None
            if kind:
                self.counts[kind] += 1
            return kind

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        body = _read_body(h)
        if self.policy.on_request is not None:
            self.policy.on_request(h.command, h.path)
        kind = self._choose(h.command, h.path)
        if kind in _S3_ERRORS:
            status, code, message = _S3_ERRORS[kind]
            xml = f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code><Message>{message}</Message>"
            payload = (xml + "<RequestId>fault</RequestId></Error>").encode()
            h.send_response(status)
            h.send_header("Content-Type", "application/xml")
            h.send_header("Content-Length", str(len(payload)))
            h.end_headers()
            if h.command != "HEAD":
                h.wfile.write(payload)
            return
        if kind == "reset":
            _reset(h)
            return
        if kind == "stall":
            time.sleep(self.policy.stall_s)
        conn = http.client.HTTPConnection(*self.upstream, timeout=60)
        try:
            headers = {k: v for k, v in h.headers.items() if k.lower() not in _HOP_BY_HOP}
            conn.request(
                h.command, h.path, body=body if body or h.command in ("PUT", "POST") else None, headers=headers
            )
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        if kind == "reset_after":
            _reset(h)
            return
        h.send_response(resp.status)
        for name, value in resp.getheaders():
            if name.lower() not in _HOP_BY_HOP and name.lower() != "content-length":
                h.send_header(name, value)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if h.command == "HEAD":
            return
        if kind == "truncate" and len(data) > 64:
            h.wfile.write(data[: len(data) // 2])
            h.wfile.flush()
            _reset(h)
            return
        h.wfile.write(data)


def _read_body(h: BaseHTTPRequestHandler) -> bytes:
    if h.headers.get("Transfer-Encoding", "").lower() == "chunked":
        chunks = []
        while True:
            size = int(h.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while h.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(chunks)
            chunks.append(h.rfile.read(size))
            h.rfile.readline()
    length = int(h.headers.get("Content-Length") or 0)
    return h.rfile.read(length) if length else b""


def _reset(h: BaseHTTPRequestHandler) -> None:
    """Close with a TCP RST (SO_LINGER 0), as a crashing load balancer does."""
    h.close_connection = True
    try:
        h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        h.connection.close()
    except OSError:
        pass
