"""``pixelperfect status RUN --watch``: a live progress bar with images/s and ETA from the database."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from pixelperfect.config import Settings


def watch_run(
    run: str,
    settings: Settings,
    *,
    interval: float = 2.0,
    console: Console | None = None,
    max_seconds: float | None = None,
) -> dict[str, object]:
    """Refresh until no image of ``run`` is queued (or ``max_seconds`` pass); returns the last status."""
    from pixelperfect.cli import run_status

    started = time.monotonic()
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    ) as progress:
        task = progress.add_task(f"run {run}", total=None, info="")
        while True:
            info = run_status(run, settings)
            counts = info["images"]
            total = sum(counts.values())
            rate = info["images_per_s"]
            progress.update(
                task,
                total=total,
                completed=counts["done"] + counts["failed"],
                info=f"{rate:.2f} img/s, {counts['failed']} failed" if rate else f"{counts['failed']} failed",
            )
            if counts["queued"] == 0 or (max_seconds is not None and time.monotonic() - started > max_seconds):
                return info
            time.sleep(interval)
