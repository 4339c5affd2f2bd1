"""Engines are per process: a forked pool process never uses its parent's connections."""

from __future__ import annotations

import os

import pytest
from sqlalchemy import text

pytestmark = [pytest.mark.integration]


def test_engines_are_not_shared_across_fork(pg_url: str) -> None:
    """A child gets its own engine after ``reset_after_fork``; the parent's pooled connection survives the child."""
    from pixelperfect.db.session import get_engine
    from pixelperfect.worker.runtime import reset_after_fork

    engine = get_engine(pg_url)
    assert engine.pool._pre_ping  # type: ignore[attr-defined]
    with engine.connect() as conn:
        parent_backend = conn.execute(text("SELECT pg_backend_pid()")).scalar()
    pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            reset_after_fork()
            child_engine = get_engine(pg_url)
            with child_engine.connect() as conn:
                child_backend = conn.execute(text("SELECT pg_backend_pid()")).scalar()
                name = conn.execute(text("SELECT current_setting('application_name')")).scalar()
            code = (
                0
                if child_engine is not engine
                and child_backend != parent_backend
                and name == (f"pixelperfect-{os.getpid()}")
                else 3
            )
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    with engine.connect() as conn:  # the same pooled connection, not closed by the child
        assert conn.execute(text("SELECT pg_backend_pid()")).scalar() == parent_backend
