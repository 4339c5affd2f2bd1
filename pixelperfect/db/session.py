"""Engines and sessions. One engine per database URL per process; forked children get fresh ones."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

_ENGINES: dict[tuple[int, str], Engine] = {}


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets the embedded runner write while `status` reads; busy_timeout waits out short write locks.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def make_engine(url: str) -> Engine:
    """A new engine: ``pool_pre_ping`` so a connection dropped by the server is replaced, not used."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, pool_pre_ping=True, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    # application_name names the creating process, so pg_stat_activity shows which process holds a connection
    # (an engine used across a fork would show the parent's pid from a child)
    return create_engine(
        url,
        pool_pre_ping=True,
        pool_size=5,
        max_overflow=5,
        pool_recycle=1800,
        connect_args={"application_name": f"pixelperfect-{os.getpid()}"},
    )


def get_engine(url: str) -> Engine:
    """The process's engine for ``url`` (created on first use, per process id so a fork never shares one)."""
    key = (os.getpid(), url)
    engine = _ENGINES.get(key)
    if engine is None:
        engine = _ENGINES[key] = make_engine(url)
    return engine


def dispose_inherited_engines() -> None:
    """Drop engines inherited across a fork without closing the parent's connections (``close=False``)."""
    pid = os.getpid()
    for (owner, url), engine in list(_ENGINES.items()):
        if owner != pid:
            engine.dispose(close=False)
            del _ENGINES[(owner, url)]


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """A session in one transaction: committed on success, rolled back on any exception."""
    factory = sessionmaker(bind=get_engine(url), expire_on_commit=False)
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
