"""Schema changes go through Alembic on both dialects: 0002 adds ``segments.box_dice`` to a database that already
holds results, keeps them, and goes back down."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import inspect, select, text

from pixelperfect.db import repo
from pixelperfect.db.migrate import alembic_config, current, upgrade
from pixelperfect.db.models import Image, Segment
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
        image_id = s.scalar(select(Image.id).where(Image.key == "a.png"))  # columns of 0001 only
        row = {"run_id": run.id, "image_id": image_id, "variant": "raw", "prompt_index": 0, "prompt_kind": "box",
               "prompt": [0, 0, 4, 4], "dice": 0.75}  # fmt: skip
        repo.mark_done(s, image_id=image_id, segments=[row], fields={})

    upgrade(db_url, "0002")
    assert current(db_url) == "0002" and "box_dice" in _columns(db_url)
    with session_scope(db_url) as s:
        assert s.execute(select(Segment.dice, Segment.box_dice)).all() == [(0.75, None)]
        s.execute(Segment.__table__.update().values(box_dice=0.5))
        assert s.scalar(select(Segment.box_dice)) == 0.5

    _downgrade(db_url, "0001")
    assert current(db_url) == "0001" and "box_dice" not in _columns(db_url)
    upgrade(db_url, "0002")
    with get_engine(db_url).connect() as conn:
        assert conn.execute(text("SELECT dice FROM segments")).scalars().all() == [0.75]
    assert "box_dice" in _columns(db_url)


@pytest.mark.integration
def test_units_and_negatives_migration_keeps_results_in_px(db_url: str) -> None:
    """0004: segments written before it keep NULL ``surface_unit`` (their NSD/HD95 were px) and images NULL
    ``labelled``; both columns take values after it, and go back down."""
    upgrade(db_url, "0002")
    with session_scope(db_url) as s:
        run = repo.create_run(s, name="old", fields=RUN_FIELDS)
        repo.add_images(s, run_id=run.id, keys=["a.png"])
        image_id = s.scalar(select(Image.id).where(Image.key == "a.png"))
        row = {"run_id": run.id, "image_id": image_id, "variant": "raw", "prompt_index": 0, "prompt_kind": "box",
               "prompt": [0, 0, 4, 4], "nsd": 0.5, "hd95": 3.0}  # fmt: skip
        repo.mark_done(s, image_id=image_id, segments=[row], fields={})
    upgrade(db_url, "0004")
    assert "surface_unit" in _columns(db_url)
    with session_scope(db_url) as s:
        assert s.execute(select(Segment.hd95, Segment.surface_unit)).all() == [(3.0, None)]
        assert s.scalar(select(Image.labelled)) is None
        assert repo.mark_labelled(s, run_id=run.id, keys=["a.png", "absent.png"]) == 1
        s.execute(Segment.__table__.update().values(surface_unit="mm"))
    with session_scope(db_url) as s:
        assert s.scalar(select(Image.labelled)) is True and s.scalar(select(Segment.surface_unit)) == "mm"
    _downgrade(db_url, "0002")
    assert "surface_unit" not in _columns(db_url)
    with get_engine(db_url).connect() as conn:
        assert conn.execute(text("SELECT hd95 FROM segments")).scalars().all() == [3.0]


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
