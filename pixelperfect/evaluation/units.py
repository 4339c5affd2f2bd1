"""Surface metrics in the report with their units: NSD and HD95 in mm and in px kept apart, never in one mean.

A segment's ``surface_unit`` says how its NSD tolerance and HD95 were measured: ``mm`` where its image's pixel
spacing was known, ``px`` where not (and for segments written before migration 0004, whose unit is NULL: they were
computed in pixels). A variant whose images mix both shows both rows, with counts; its ``nsd_mean`` /
``hd95_mean`` in report.json are the one unit's when there is one unit, and ``None`` (``surface_unit: "mixed"``)
when there are two — the per-unit values are in ``surface_by_unit``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from pixelperfect.db.models import Image, ImageStatus, Run, Segment

UNITS = ("mm", "px")


def surface_summary(session: Session, *, run_ids: Sequence[int]) -> list[dict[str, Any]]:
    """Per run × variant × unit, over done segments with an NSD: ``n`` (segments), ``nsd_mean``, ``hd95_n`` and
    ``hd95_mean`` (HD95 is undefined where exactly one mask is empty) and ``nsd_tolerance`` (the run's tolerance
    in that unit). Ordered by run id, variant, unit (mm first)."""
    unit = func.coalesce(Segment.surface_unit, "px")
    aggregates = (func.count(Segment.nsd), func.avg(Segment.nsd), func.count(Segment.hd95), func.avg(Segment.hd95))
    stmt = (
        select(Segment.run_id, Run.name, Segment.variant, unit, *aggregates)
        .join(Run, Run.id == Segment.run_id)
        .join(Image, Image.id == Segment.image_id)
        .where(Segment.run_id.in_(list(run_ids)), Image.status == ImageStatus.done.value, Segment.nsd.is_not(None))
        .group_by(Segment.run_id, Run.name, Segment.variant, unit)
        .order_by(Segment.run_id, Segment.variant, unit)
    )
    settings_stmt = select(Run.id, Run.settings).where(Run.id.in_(list(run_ids)))
    run_settings: dict[int, Any] = {rid: values for rid, values in session.execute(settings_stmt)}
    out = []
    for run_id, name, variant, u, n, nsd_mean, hd_n, hd_mean in session.execute(stmt):
        settings = run_settings.get(run_id) or {}
        tolerance = settings.get("nsd_tolerance_mm") if u == "mm" else settings.get("nsd_tolerance", 2.0)
        out.append({"run": name, "variant": variant, "unit": u, "n": int(n), "nsd_tolerance": tolerance,
                    "nsd_mean": _float(nsd_mean), "hd95_n": int(hd_n), "hd95_mean": _float(hd_mean)})  # fmt: skip
    return out


def variant_surface(rows: Sequence[dict[str, Any]], run: str, variant: str) -> dict[str, Any]:
    """The report.json keys of one run × variant: ``nsd_mean``, ``hd95_mean``, ``surface_unit`` (``mm``, ``px``,
    ``mixed`` or ``None`` without surface metrics) and ``surface_by_unit`` (``{unit: {n, nsd_mean, hd95_n,
    hd95_mean, nsd_tolerance}}``)."""
    by_unit = {
        r["unit"]: {k: r[k] for k in ("n", "nsd_tolerance", "nsd_mean", "hd95_n", "hd95_mean")}
        for r in rows
        if r["run"] == run and r["variant"] == variant
    }
    if len(by_unit) == 1:
        ((unit, only),) = by_unit.items()
        return {"nsd_mean": only["nsd_mean"], "hd95_mean": only["hd95_mean"], "surface_unit": unit,
                "surface_by_unit": by_unit}  # fmt: skip
    return {"nsd_mean": None, "hd95_mean": None, "surface_unit": "mixed" if by_unit else None,
            "surface_by_unit": by_unit}  # fmt: skip


def unit_notes(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Lines for the top of the report when units differ: between runs, or within a run's variant."""
    units_by_run: dict[str, set[str]] = {}
    for r in rows:
        units_by_run.setdefault(r["run"], set()).add(r["unit"])
    used = set().union(*units_by_run.values()) if units_by_run else set()
    if len(used) < 2:
        return []
    parts = [f"{run}: {' and '.join(sorted(u))}" for run, u in units_by_run.items()]
    return [
        "Units differ: NSD and HD95 are in millimetres where an image's pixel spacing was known and in pixels where "
        f"it was not ({'; '.join(parts)}). mm and px results are shown apart, with counts, and never averaged "
        "together; compare runs only within one unit."
    ]


def _float(value: Any) -> float | None:
    return None if value is None else float(value)
