"""Schema changes go through Alembic on both dialects: 0002 adds ``segments.box_dice`` to a database that already
holds results, keeps them, and goes back down."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import MetaData, inspect, select, text

from pixelperfect.db import repo
from pixelperfect.db.migrate import alembic_config, current, upgrade
from pixelperfect.db.models import Segment, utcnow
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
    _write_old_result(db_url, dice=0.75)  # results written by the 0001 code, through 0001's own tables

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
    run_pk = _write_old_result(db_url, nsd=0.5, hd95=3.0)  # through 0002's own tables: the ORM is newer
    upgrade(db_url, "0004")
    assert "surface_unit" in _columns(db_url)
    with get_engine(db_url).begin() as conn:
        assert conn.execute(text("SELECT hd95, surface_unit FROM segments")).all() == [(3.0, None)]
        assert conn.execute(text("SELECT labelled FROM images")).scalar() is None
    with session_scope(db_url) as s:
        assert repo.mark_labelled(s, run_id=run_pk, keys=["a.png", "absent.png"]) == 1
    with get_engine(db_url).begin() as conn:
        conn.execute(text("UPDATE segments SET surface_unit = 'mm'"))
        assert conn.execute(text("SELECT labelled FROM images")).scalar() in (True, 1)
        assert conn.execute(text("SELECT surface_unit FROM segments")).scalar() == "mm"
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


def _write_old_result(db_url: str, **metrics: float) -> int:
    """One done image with one segment written through the tables as the database has them now (reflected)."""
    meta = MetaData()
    meta.reflect(get_engine(db_url))
    runs, images, segments = (meta.tables[t] for t in ("runs", "images", "segments"))
    with get_engine(db_url).begin() as conn:
        now = utcnow()
        run_pk = conn.execute(runs.insert().values(name="old", created_at=now, kind="segment", **RUN_FIELDS))
        run_id = run_pk.inserted_primary_key[0]
        image = conn.execute(images.insert().values(run_id=run_id, key="a.png", status="done", attempts=1,
                                                    created_at=now))  # fmt: skip
        segment = {"run_id": run_id, "image_id": image.inserted_primary_key[0], "variant": "raw", "prompt_index": 0,
                   "prompt_kind": "box", "prompt": [0, 0, 4, 4], **metrics}  # fmt: skip
        conn.execute(segments.insert().values(**segment))
    return int(run_id)


@pytest.mark.integration
def test_evaluation_index_migration_up_and_down(db_url: str) -> None:
    """0007 swaps the images' (run, status) index for the status/progress one, and back."""
    upgrade(db_url, "0007")

    def indexes() -> set[str]:
        return {i["name"] for i in inspect(get_engine(db_url)).get_indexes("images")}

    assert "ix_images_run_status_progress" in indexes() and "ix_images_run_status" not in indexes()
    _downgrade(db_url, "0006")
    assert "ix_images_run_status" in indexes() and "ix_images_run_status_progress" not in indexes()
    upgrade(db_url)


@pytest.mark.integration
def test_dicom_sr_migration_up_and_down(db_url: str) -> None:
    """0009 adds the SR columns to ``seg_objects`` and the de-identification salt to ``runs``, keeps the SEG rows,
    and goes back down."""
    upgrade(db_url, "0007")
    assert "sr_key" not in _sr_columns(db_url)
    run_id = _write_old_result(db_url, dice=0.5)
    with get_engine(db_url).begin() as conn:
        seg_objects = MetaData()
        seg_objects.reflect(conn, only=["seg_objects", "images"])
        image_id = conn.execute(select(seg_objects.tables["images"].c.id)).scalar_one()
        row = {"run_id": run_id, "image_id": image_id, "variant": "raw", "object_key": "file:///s.dcm"}
        conn.execute(seg_objects.tables["seg_objects"].insert().values(**row, updated_at=utcnow()))
    upgrade(db_url)
    new = {"sr_key", "sr_sop_instance_uid", "sr_error", "sr_stow_status", "sr_stow_error"}
    assert new <= _sr_columns(db_url)
    assert "deid_salt" in {c["name"] for c in inspect(get_engine(db_url)).get_columns("runs")}
    with get_engine(db_url).connect() as conn:
        assert conn.execute(text("SELECT object_key, sr_key FROM seg_objects")).all() == [("file:///s.dcm", None)]
    _downgrade(db_url, "0007")
    assert not new & _sr_columns(db_url)
    with get_engine(db_url).connect() as conn:
        assert conn.execute(text("SELECT object_key FROM seg_objects")).scalars().all() == ["file:///s.dcm"]
    upgrade(db_url)


def _sr_columns(url: str) -> set[str]:
    return {c["name"] for c in inspect(get_engine(url)).get_columns("seg_objects")}
