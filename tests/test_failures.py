"""Known failures in words (``failures.py``) and the command line's one line for them (``preflight.explain``): the
real exceptions of the real libraries, raised against a closed port or a fresh SQLite file."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from pixelperfect.config import Settings
from pixelperfect.failures import reason, redact, scrub
from pixelperfect.preflight import explain


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_redact_hides_only_the_password() -> None:
    assert redact("postgresql+psycopg://pp:s3cret@db:5432/pp") == "postgresql+psycopg://pp:***@db:5432/pp"
    assert redact("redis://:pw@127.0.0.1:6379/0") == "redis://:***@127.0.0.1:6379/0"
    assert redact("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
    assert redact("sqlite:///pixelperfect.db") == "sqlite:///pixelperfect.db"
    assert redact(None) == "unset"
    assert scrub("token abc123 in a message", ["abc123", None, ""]) == "token *** in a message"


def test_a_fresh_sqlite_file_says_it_has_no_tables(tmp_path: Path) -> None:
    from sqlalchemy import create_engine, text

    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    with pytest.raises(Exception) as caught, create_engine(url).connect() as conn:
        conn.execute(text("select * from runs"))
    line = explain(caught.value, Settings(database_url=url))
    assert line is not None and line.startswith(f"database {url} (PIXELPERFECT_DATABASE_URL): has no PixelPerfect")


def test_a_closed_redis_port_is_a_refused_connection_of_the_broker() -> None:
    import redis

    url = f"redis://:pw-123@127.0.0.1:{closed_port()}/0"
    with pytest.raises(redis.ConnectionError) as caught:
        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    line = explain(caught.value, Settings(broker_url=url))
    assert line == f"broker {redact(url)} (PIXELPERFECT_BROKER_URL): connection refused (is the service running there?)"
    assert "pw-123" not in line


def test_an_unknown_error_is_left_to_its_traceback() -> None:
    assert explain(ZeroDivisionError("division by zero"), Settings()) is None
    assert reason(RuntimeError("something odd\nsecond line")) == "something odd"
