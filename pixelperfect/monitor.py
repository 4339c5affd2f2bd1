"""``pixelperfect status RUN --watch``: live progress of a run from the database — images/s, ETA, stage shares.

Everything comes from the rows workers write (image status, ``finished_at``, ``Image.timings``), so the view works
from any machine that reaches the database, for embedded and distributed runs alike. On a terminal it is a rich
live display (bar + stage table); on a pipe or file it prints one plain line per refresh, so logs stay readable.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import TypedDict

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn
from rich.table import Table

from pixelperfect.broker.names import STAGES
from pixelperfect.config import Settings

#: Images whose timings are summed for the stage shares (see ``repo.stage_timings``).
STAGE_SAMPLE = 5000


class RateWindow:
    """Images per second over the last ``window_s`` seconds of observed progress (a moving window).

    The run's lifetime average (first to last ``finished_at``) hides a slowdown or a new worker; the window shows it.
    """

    def __init__(self, window_s: float = 30.0) -> None:
        if window_s <= 0:
            raise ValueError(f"window_s must be > 0, not {window_s}")
        self.window_s = window_s
        self._samples: deque[tuple[float, int]] = deque()

    def add(self, t: float, finished: int) -> None:
        """Record ``finished`` images (done + failed) seen at monotonic time ``t`` (seconds)."""
        self._samples.append((t, finished))
        while len(self._samples) > 2 and t - self._samples[1][0] >= self.window_s:
            self._samples.popleft()

    def rate(self) -> float | None:
        """Images/s across the window, or ``None`` until two samples at least a second apart show progress."""
        if len(self._samples) < 2:
            return None
        (t0, n0), (t1, n1) = self._samples[0], self._samples[-1]
        if t1 - t0 < 1.0 or n1 <= n0:
            return None
        return (n1 - n0) / (t1 - t0)


def format_eta(seconds: float | None) -> str:
    """``None`` -> ``?``; else ``1h02m``, ``3m05s`` or ``12s``."""
    if seconds is None:
        return "?"
    s = max(0, round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def stage_shares(totals: dict[str, float], n: int) -> list[tuple[str, float, float]]:
    """``(stage, mean seconds per image, share of the summed stage time)``, pipeline order first."""
    total = sum(totals.values())
    if n < 1 or total <= 0:
        return []
    order = [s for s in STAGES if s in totals] + sorted(s for s in totals if s not in STAGES)
    return [(s, totals[s] / n, totals[s] / total) for s in order]


class RunStatus(TypedDict, total=False):
    """What ``pixelperfect status RUN --json`` prints (:func:`run_status`; ``stages`` and ``stage_sample`` from
    :func:`snapshot`)."""

    run: str
    images: dict[str, int]
    segments: int
    failures: dict[str, int]
    images_per_s: float | None
    eta_s: float | None
    model: str
    variants: list[str]
    dicom: dict[str, int]  # SEG and SR counts (db/segs.py seg_counts); empty for a run that writes none
    state: str  # active, paused, cancelled, deleting
    state_reason: str | None  # why a run paused itself
    stages: list[tuple[str, float, float]]
    stage_sample: int
    rate: float | None  # images/s over the live view's window (:func:`watch_run`)


def run_status(run: str, settings: Settings) -> RunStatus:
    """The run's image counts by status, segments, failure reasons, lifetime images/s and ETA (seconds), model
    and variant names, read from the database. Raises ``LookupError`` for an unknown run or an empty database."""
    from sqlalchemy import inspect

    from pixelperfect.db import queries, repo
    from pixelperfect.db import segs as seg_repo
    from pixelperfect.db.session import get_engine, session_scope

    if not inspect(get_engine(settings.database_url)).has_table("runs"):
        raise LookupError(f"no run named {run!r}: {settings.database_url} has no PixelPerfect tables yet")
    with session_scope(settings.database_url) as session:
        row = repo.get_run(session, name=run)
        if row is None:
            raise LookupError(f"no run named {run!r} in {settings.database_url}")
        progress = queries.run_progress(session, run_id=row.id)  # two indexed queries over the run's images
        counts, first, last, finished = progress["images"], progress["first"], progress["last"], progress["finished"]
        rate = None
        if first and last and finished > 1 and last > first:
            rate = (finished - 1) / (last - first).total_seconds()
        return {
            "run": run,
            "images": counts,
            "segments": progress["segments"],
            "failures": progress["failures"],
            "images_per_s": rate,
            "eta_s": counts["queued"] / rate if rate and counts["queued"] else (0.0 if not counts["queued"] else None),
            "model": row.model,
            "variants": [v["name"] for v in row.variants],
            "dicom": seg_repo.seg_counts(session, run_id=row.id) if (row.settings or {}).get("outputs") else {},
            "state": row.state,
            "state_reason": row.state_reason,
        }


def snapshot(run: str, settings: Settings) -> RunStatus:
    """``run_status`` plus ``stages`` (list of stage, s/image, share) and ``stage_sample`` (images summed)."""
    from pixelperfect.db import repo
    from pixelperfect.db.session import session_scope

    info = run_status(run, settings)
    with session_scope(settings.database_url) as session:
        row = repo.get_run(session, name=run)
        totals, n = repo.stage_timings(session, run_id=row.id, limit=STAGE_SAMPLE) if row else ({}, 0)
    info["stages"] = stage_shares(totals, n)
    info["stage_sample"] = n
    return info


def _rate_and_eta(info: RunStatus, window: RateWindow) -> tuple[float | None, float | None]:
    counts = info["images"]
    rate = window.rate() or info["images_per_s"]
    if counts["queued"] == 0:
        return rate, 0.0
    return rate, (counts["queued"] / rate if rate else None)


def status_line(info: RunStatus, rate: float | None, eta: float | None) -> str:
    """One plain line: progress, images/s, ETA, failures and stage shares."""
    counts = info["images"]
    total = sum(counts.values())
    finished = counts["done"] + counts["failed"]
    pct = 100.0 * finished / total if total else 0.0
    stages = " ".join(f"{s} {share:.0%}" for s, _, share in info["stages"]) or "no stage timings yet"
    line = (
        f"run {info['run']}: {finished}/{total} ({pct:.0f}%) · {rate or 0:.2f} img/s · ETA {format_eta(eta)} · "
        f"{counts['failed']} failed · {stages}"
    )
    d = info.get("dicom") or {}
    if d:
        line += (
            f" · SEG {d['stored']} stored/{d['seg_error']} failed/{d['stowed']} sent"
            f" · SR {d['sr_stored']} stored/{d['sr_error']} failed/{d['sr_stowed']} sent"
        )
    return line


def stage_table(info: RunStatus) -> Table:
    """Stage, mean ms per image and share of the per-image time, with a proportional bar."""
    table = Table(box=None, padding=(0, 1), title_justify="left")
    table.add_column("stage")
    table.add_column("ms/img", justify="right")
    table.add_column("share", justify="right")
    table.add_column("")
    for stage, mean_s, share in info["stages"]:
        table.add_row(stage, f"{mean_s * 1000:.1f}", f"{share:.0%}", "█" * max(1, round(share * 30)))
    table.caption = f"stage times over {info['stage_sample']} done images" if info["stages"] else "no timings yet"
    return table


def watch_run(
    run: str,
    settings: Settings,
    *,
    interval: float = 2.0,
    console: Console | None = None,
    max_seconds: float | None = None,
    fetch: Callable[[str, Settings], RunStatus] = snapshot,
) -> RunStatus:
    """Refresh every ``interval`` s until no image of ``run`` is queued or ``max_seconds`` pass; returns the last
    snapshot with ``rate`` (images/s) and ``eta_s`` as shown. Raises ``LookupError`` for an unknown run."""
    if interval <= 0:
        raise ValueError(f"interval must be > 0, not {interval}")
    console = console or Console()
    window = RateWindow(max(10.0, 10 * interval))
    started = time.monotonic()

    def poll() -> tuple[RunStatus, bool]:
        info = fetch(run, settings)
        counts = info["images"]
        window.add(time.monotonic(), counts["done"] + counts["failed"])
        info["rate"], info["eta_s"] = _rate_and_eta(info, window)
        timed_out = max_seconds is not None and time.monotonic() - started >= max_seconds
        stopped = info.get("state", "active") != "active"  # paused or cancelled: nothing moves until a submit
        return info, counts["queued"] == 0 or timed_out or stopped

    if not console.is_terminal:
        while True:
            info, finished = poll()
            console.print(status_line(info, info["rate"], info["eta_s"]), highlight=False, soft_wrap=True)
            if finished:
                return info
            time.sleep(interval)

    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]} img/s · ETA {task.fields[eta]} · {task.fields[failed]} failed"),
        console=console,
        auto_refresh=False,
    )
    task = progress.add_task(f"run {run}", total=None, rate="–", eta="?", failed=0)
    with Live(console=console, auto_refresh=False, transient=False) as live:
        while True:
            info, finished = poll()
            counts = info["images"]
            progress.update(
                task,
                total=sum(counts.values()),
                completed=counts["done"] + counts["failed"],
                rate=f"{info['rate']:.2f}" if info["rate"] else "–",
                eta=format_eta(info["eta_s"]),
                failed=counts["failed"],
            )
            live.update(Group(progress, stage_table(info)), refresh=True)
            if finished:
                return info
            time.sleep(interval)
