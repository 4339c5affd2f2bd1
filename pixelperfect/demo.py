"""``pixelperfect demo``: phantom X-rays through the whole job, embedded, on the CPU, in a couple of minutes."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from pixelperfect.config import Settings


def run_demo(
    workdir: Path,
    settings: Settings,
    *,
    n: int,
    size: int,
    variants: Sequence[str],
    models: Sequence[str],
    console: Console,
) -> list[dict[str, object]]:
    from pixelperfect.db import queries, repo
    from pixelperfect.db.session import session_scope
    from pixelperfect.phantoms import write_phantoms
    from pixelperfect.producer.enqueue import SubmitRequest, submit

    started = time.perf_counter()
    data = workdir / "phantoms"
    if not (data / "labels.csv").exists():
        write_phantoms(data, n, seed=0, size=size)
    console.print(f"phantoms: {n} chest X-rays of {size}² px in {data}")
    run_ids = []
    for model in models:
        name = f"demo-{model}"
        t0 = time.perf_counter()
        result = submit(
            SubmitRequest(
                source=str(data / "images"),
                run=name,
                variants=variants,
                model=model,
                annotations=str(data / "labels.csv"),
                annotations_format="rsna",
                gt_masks=str(data / "masks"),
            ),
            settings,
        )
        run_ids.append(result.run_id)
        console.print(f"run {name}: {result.pending} images processed in {time.perf_counter() - t0:.1f}s")
    with session_scope(settings.database_url) as session:
        rows = queries.variant_summary(session, run_ids=run_ids)
        failed = {m: repo.status_counts(session, run_id=r)["failed"] for m, r in zip(models, run_ids, strict=True)}
    table = Table(title="PixelPerfect demo — SAM vs baseline, raw vs preprocessed (phantom ground truth)")
    for col in (
        "model",
        "variant",
        "images",
        "segments",
        "mean score",
        "mean stability",
        "consistency std",
        "mean Dice",
    ):
        table.add_column(col, justify="left" if col in ("model", "variant") else "right")
    for row in rows:
        table.add_row(
            str(row["model"]),
            str(row["variant"]),
            str(row["images"]),
            str(row["segments"]),
            _fmt(row["score_mean"]),
            _fmt(row["stability_mean"]),
            _fmt(row["consistency_std_mean"]),
            _fmt(row["dice_mean"]),
        )
    console.print(table)
    if any(failed.values()):
        console.print(f"failed images: {failed}")
    report = _report(workdir, settings, [f"demo-{m}" for m in models], console)
    console.print(f"database: {settings.database_url}")
    console.print(f"masks:    {settings.store_url}")
    if report:
        console.print(f"report:   {report}")
    console.print(f"demo finished in {time.perf_counter() - started:.1f}s")
    return rows


def _report(workdir: Path, settings: Settings, runs: list[str], console: Console) -> Path | None:
    try:
        from pixelperfect.evaluation.report import build_report
    except ModuleNotFoundError:
        return None
    return build_report(runs, workdir / "report", settings=settings)


def _fmt(value: object) -> str:
    return "–" if value is None else f"{float(value):.3f}"  # type: ignore[arg-type]
