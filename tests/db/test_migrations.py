"""Schema changes go through Alembic on both dialects: 0002 adds ``segments.box_dice`` to a database that already
holds results, keeps them, and goes back down."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import inspect, select, text

from pixelperfect.db import repo
from pixelperfect.db.migrate import alembic_config, current, upgrade
from pixelperfect.db.models import Segment
from pixelperfect.db.session import get_engine, session_scope
from tests.db.test_repo import RUN_FIELDS


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'migrate.db'}"
    return str(request.getfixturevalue("pg_url"))


def _columns(url: str) -> set[str]:
    return {c["name"] for c in inspect(get_engine(url)).get_columns("segments")}


def _downgrade(url: str, revision: str) -> None:
    config = alembic_config(url)
    with get_engine(url).begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, revision)


@pytest.mark.integration
def test_box_dice_migration_keeps_existing_results(db_url: str) -> None:
    upgrade(db_url, "0001")
    assert current(db_url) == "0001" and "box_dice" not in _columns(db_url)
    with session_scope(db_url) as s:  # results written by the 0001 code: no box_dice key
        run = repo.create_run(s, name="old", fields=RUN_FIELDS)
        repo.add_images(s, run_id=run.id, keys=["a.png"])
        image = repo.images_by_key(s, run_id=run.id, keys=["a.png"])["a.png"]
        row = {"run_id": run.id, "image_id": image.id, "variant": "raw", "prompt_index": 0, "prompt_kind": "box",
               "prompt": [0, 0, 4, 4], "dice": 0.75}  # fmt: skip
        repo.mark_done(s, image_id=image.id, segments=[row], fields={})

    upgrade(db_url)
    from alembic.script import ScriptDirectory

    from pixelperfect.db.migrate import alembic_config

    head = ScriptDirectory.from_config(alembic_config(db_url)).get_current_head()
    assert current(db_url) == head and "box_dice" in _columns(db_url)
    with session_scope(db_url) as s:
        assert s.execute(select(Segment.dice, Segment.box_dice)).all() == [(0.75, None)]
        s.execute(Segment.__table__.update().values(box_dice=0.5))
        assert s.scalar(select(Segment.box_dice)) == 0.5

    _downgrade(db_url, "0001")
    assert current(db_url) == "0001" and "box_dice" not in _columns(db_url)
    with get_engine(db_url).connect() as conn:
        assert conn.execute(text("SELECT dice FROM segments")).scalars().all() == [0.75]
    upgrade(db_url)
    assert "box_dice" in _columns(db_url)


@pytest.mark.integration
def test_migrations_build_exactly_the_models_schema(db_url: str) -> None:
    """Alembic's autogenerate finds nothing to add: the ORM models and the migrations describe one schema."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from pixelperfect.db.models import Base

    upgrade(db_url)
    with get_engine(db_url).connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == [], diff
