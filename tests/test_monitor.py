"""``status --watch`` and the per-image stage timings it reads, on an embedded run (SQLite, in-process)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console
from sqlalchemy import select, update

from pixelperfect.broker.names import STAGES
from pixelperfect.config import Settings, use_settings
from pixelperfect.db import repo
from pixelperfect.db.models import Image
from pixelperfect.db.session import session_scope
from pixelperfect.embedded import SubmitRequest, submit
from pixelperfect.monitor import RateWindow, format_eta, stage_shares, status_line, watch_run


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory, phantom_dir: Path, tiny_checkpoint: Path) -> Iterator[str]:
    """The database directory of a finished embedded run ``mon`` (12 phantoms, batches of 4)."""
    work = tmp_path_factory.mktemp("monitor")
    settings = _settings(work)
    use_settings(settings)
    req = SubmitRequest(
        source=str(phantom_dir / "images"),
        run="mon",
        variants=["raw", "clahe"],
        model="sam_tiny",
        checkpoint=str(tiny_checkpoint),
        annotations=str(phantom_dir / "labels.csv"),
        batch_size=4,
    )
    submit(req, settings)
    use_settings(None)
    yield str(work)


def _settings(work: Path | str) -> Settings:
    return Settings(
        broker_url=None,
        database_url=f"sqlite:///{Path(work) / 'pp.db'}",
        store_url=f"file://{Path(work) / 'store'}",
        model="sam_tiny",
        device="cpu",
    )


@pytest.mark.integration
@pytest.mark.slow
def test_every_done_image_has_all_stage_timings(finished_run: str) -> None:
    settings = _settings(finished_run)
    with session_scope(settings.database_url) as session:
        rows = list(session.scalars(select(Image)))
        assert len(rows) == 12 and all(r.status == "done" for r in rows)
        for row in rows:
            assert row.timings is not None and set(row.timings) == set(STAGES), row.timings
            assert all(v >= 0 for v in row.timings.values())
            assert row.timings["db"] > 0 and row.timings["download"] > 0
        assert sum(r.timings["encode"] for r in rows if r.timings) > 0  # images without boxes skip the encoder
        totals, n = repo.stage_timings(session, run_id=rows[0].run_id, limit=5)
        assert n == 5 and set(totals) == set(STAGES)
        with pytest.raises(ValueError, match="limit"):
            repo.stage_timings(session, run_id=rows[0].run_id, limit=0)


@pytest.mark.integration
@pytest.mark.slow
def test_watch_a_finished_run_prints_rate_eta_and_stage_shares(finished_run: str) -> None:
    buf = io.StringIO()
    info = watch_run("mon", _settings(finished_run), interval=0.1, console=Console(file=buf, width=200))
    out = buf.getvalue()
    assert out.count("\n") == 1  # finished: one refresh, one line
    assert "run mon: 12/12 (100%)" in out and "ETA 0s" in out and "0 failed" in out
    assert info["rate"] is not None and info["rate"] > 0 and f"{info['rate']:.2f} img/s" in out
    shares = {stage: share for stage, _, share in info["stages"]}
    assert set(shares) == set(STAGES) and sum(shares.values()) == pytest.approx(1.0)
    assert info["stage_sample"] == 12
    for stage in STAGES:
        assert f"{stage} {shares[stage]:.0%}" in out


@pytest.mark.integration
@pytest.mark.slow
def test_watch_on_a_terminal_draws_bar_and_stage_table(finished_run: str) -> None:
    buf = io.StringIO()
    console = Console(file=buf, width=140, force_terminal=True, color_system=None)
    watch_run("mon", _settings(finished_run), interval=0.1, console=console)
    out = buf.getvalue()
    assert "run mon" in out and "12/12" in out and "100%" in out and "img/s" in out and "ETA 0s" in out
    assert "━" in out  # the progress bar
    assert "ms/img" in out and "stage times over 12 done images" in out
    for stage in STAGES:
        assert stage in out


@pytest.mark.integration
@pytest.mark.slow
def test_watch_an_unfinished_run_stops_at_max_seconds_with_an_eta(finished_run: str, tmp_path: Path) -> None:
    import sqlite3

    with sqlite3.connect(Path(finished_run) / "pp.db") as src, sqlite3.connect(tmp_path / "pp.db") as dst:
        src.backup(dst)  # a file copy could miss pages still in the write-ahead log
    settings = _settings(tmp_path)
    with session_scope(settings.database_url) as session:
        ids = list(session.scalars(select(Image.id).order_by(Image.id).limit(3)))
        session.execute(update(Image).where(Image.id.in_(ids)).values(status="queued", finished_at=None))
    buf = io.StringIO()
    info = watch_run("mon", settings, interval=0.2, console=Console(file=buf, width=200), max_seconds=0.5)
    lines = buf.getvalue().splitlines()
    assert len(lines) >= 2  # refreshed until max_seconds
    assert info["images"] == {"queued": 3, "done": 9, "failed": 0}
    # no progress while watching: the rate is the run's lifetime rate and the ETA is queued / rate
    assert info["rate"] == pytest.approx(info["images_per_s"])
    assert info["eta_s"] == pytest.approx(3 / info["rate"])
    assert f"ETA {format_eta(info['eta_s'])}" in lines[-1] and "9/12 (75%)" in lines[-1]


@pytest.mark.integration
@pytest.mark.slow
def test_cli_status_watch(finished_run: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The typer command in-process (the live subprocess run is in test_flower.py)."""
    from typer.testing import CliRunner

    from pixelperfect.cli import app

    monkeypatch.setenv("PIXELPERFECT_DATABASE_URL", f"sqlite:///{Path(finished_run) / 'pp.db'}")
    runner = CliRunner()
    out = runner.invoke(app, ["status", "mon", "--watch", "--interval", "0.2", "--max-seconds", "5"])
    assert out.exit_code == 0, out.output
    assert "run mon: 12/12 (100%)" in out.stdout and "img/s" in out.stdout and "encode" in out.stdout
    missing = runner.invoke(app, ["status", "nope", "--watch"])
    assert missing.exit_code == 2 and "no run named 'nope'" in missing.stderr


def test_rate_window() -> None:
    w = RateWindow(window_s=10)
    assert w.rate() is None
    w.add(0.0, 0)
    w.add(0.5, 10)
    assert w.rate() is None  # under a second apart
    w.add(2.0, 20)
    assert w.rate() == pytest.approx(10.0)
    for t in range(3, 40):
        w.add(float(t), 20 + 2 * (t - 2))  # slows down to 2 img/s: the window forgets the fast start
    assert w.rate() == pytest.approx(2.0)
    w.add(41.0, 94)
    w.add(52.0, 94)
    assert w.rate() is None  # stalled across the whole window
    with pytest.raises(ValueError, match="window_s"):
        RateWindow(0)


def test_format_eta_and_shares() -> None:
    assert [format_eta(s) for s in (None, 0, 12.4, 185, 3725)] == ["?", "0s", "12s", "3m05s", "1h02m"]
    shares = stage_shares({"encode": 3.0, "download": 1.0, "custom": 0.0}, 2)
    assert shares == [("download", 0.5, 0.25), ("encode", 1.5, 0.75), ("custom", 0.0, 0.0)]
    assert stage_shares({}, 0) == []
    info = {"run": "r", "images": {"queued": 5, "done": 4, "failed": 1}, "stages": shares}
    assert status_line(info, 2.5, 2.0) == (
        "run r: 5/10 (50%) · 2.50 img/s · ETA 2s · 1 failed · download 25% encode 75% custom 0%"
    )
