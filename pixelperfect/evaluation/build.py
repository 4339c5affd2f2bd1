"""``pixelperfect report``: one or more runs -> a self-contained HTML report, its JSON, or CSV tables.

``report.json`` is ``{"findings": [...], "runs": [{"run", "model", "variants": [{"variant", "n_segments", "score_mean",
"stability_mean", "consistency_std_mean", "consistency_iou_mean", "dice_mean", "iou_mean", "box_dice_mean",
"box_fallbacks", "nsd_mean", "hd95_mean", "surface_unit", "surface_by_unit"}]}], "comparisons": [...],
"detection": [...], "notes": [...]}`` (``findings``: the opening sentences, :mod:`.findings`) with ``null``
where a measure does not apply (NSD/HD95 units: mm or px,
never mixed: :mod:`pixelperfect.evaluation.units`); a comparison of kind
``prompt`` pairs a run's Dice with its prompt boxes' own Dice (sides carry ``mask``); ``bootstrap_n`` is how many
pairs its bootstrap CI resampled (a seeded subsample above ``stats.BOOTSTRAP_MAX_PAIRS``), ``sample_n`` how many
its Wilcoxon p and box plots used (a seeded subsample above ``sampled.PAIRED_MAX_PAIRS``; ``n`` and means exact).
``report.html`` embeds every figure and gallery image as a base64 PNG, so the file can be mailed or archived on
its own; its size does not grow with the run (sampled scatter plots, box plots from percentiles, a fixed gallery).

JSON and CSV import neither matplotlib nor OpenCV nor the model code: they are aggregates and streams of columns.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypedDict

import numpy as np

from pixelperfect.config import Settings
from pixelperfect.db.session import session_scope
from pixelperfect.evaluation.collect import Comparison, ReportData, collect
from pixelperfect.evaluation.findings import Finding, findings

FORMATS = ("html", "json", "csv")


def build_report(runs: list[str], out: Path, *, settings: Settings, fmt: str = "html") -> Path:
    """Write the report of ``runs`` (the first is the baseline of run comparisons) into ``out``.

    Returns ``out/report.html``, ``out/report.json``, or ``out`` itself holding the CSV tables.
    """
    if fmt not in FORMATS:
        raise ValueError(f"report format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    with session_scope(settings.database_url) as session:
        data = collect(session, list(runs), full=fmt != "json")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if fmt == "json":
        path = out / "report.json"
        path.write_text(json.dumps(report_json(data), indent=2, allow_nan=False))
        return path
    if fmt == "csv":
        write_csv(data, out)
        return out
    from pixelperfect.evaluation.page import render_html

    path = out / "report.html"
    path.write_text(render_html(data, settings))
    return path


def _clean(value: Any) -> Any:
    """JSON-safe: NaN/inf -> None, numpy scalars -> Python, recursively."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class ReportJson(TypedDict):
    """``report.json`` (the module docstring describes each part)."""

    notes: list[str]
    findings: list[Finding]
    runs: list[dict[str, Any]]
    comparisons: list[Comparison]
    detection: list[dict[str, Any]]


def report_json(data: ReportData) -> ReportJson:
    out: ReportJson = _clean(
        {
            "notes": data.notes,
            "findings": findings(data.comparisons),
            "runs": data.runs_json(),
            "comparisons": data.comparisons,
            "detection": data.detection,
        }
    )
    return out


# --- CSV -------------------------------------------------------------------------------------------------------


def _write_table(path: Path, rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> None:
    cols = list(columns or (rows[0].keys() if rows else []))
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: "" if row.get(c) is None else row.get(c) for c in cols})


def _flat_comparisons(data: ReportData) -> list[dict[str, Any]]:
    return [
        {
            **{k: v for k, v in c.items() if k not in ("a", "b")},
            "run_a": c["a"]["run"],
            "variant_a": c["a"]["variant"],
            "run_b": c["b"]["run"],
            "variant_b": c["b"]["variant"],
            "mask_a": c["a"].get("mask"),  # kind "prompt": the prompt box against the model's mask
            "mask_b": c["b"].get("mask"),
        }
        for c in data.comparisons
    ]


_DETECTION_COLUMNS = ["run", "variant", "prompt_mode", "measure", "rsna_score", "box_agreement", "images", "labelled",
                      "negatives", "negatives_predicted", "skipped", "rsna_score_positives", "positives",
                      # concept runs: the instance-score threshold chosen by the sweep, and what it gives
                      "score_threshold", "precision", "recall", "f1", "rsna_score_at_threshold",
                      "presence_negatives", "presence_positives"]  # fmt: skip


_SURFACE_COLUMNS = ["run", "variant", "unit", "n", "nsd_tolerance", "nsd_mean", "hd95_n", "hd95_mean"]


_SURFACE_COLUMNS = ["run", "variant", "unit", "n", "nsd_tolerance", "nsd_mean", "hd95_n", "hd95_mean"]


def write_csv(data: ReportData, out: Path) -> list[Path]:
    """The report's tables as CSV files in ``out``; returns their paths."""
    summary = [
        {"run": r["run"], "model": r["model"], **{k: x for k, x in v.items() if k != "surface_by_unit"}}
        for r in data.runs_json()
        for v in r["variants"]
    ]  # the per-unit surface values are surface.csv's rows
    reliability = [{"run": c["run"], "variant": c["variant"], **b} for c in data.calibration for b in c["reliability"]]
    spearman = [
        {"run": c["run"], "variant": c["variant"], "predictor": p, **s, "ece": c["ece"]}
        for c in data.calibration
        for p, s in c["spearman"].items()
    ]
    forest = [{k: v for k, v in f.items() if k not in ("y_test", "y_pred")} for f in data.forest]
    cases = [
        {"rank": i + 1, "which": w, **c}
        for w, lst in (("worst", data.worst), ("best", data.best))
        for i, c in enumerate(lst)
    ]
    tables = {
        "summary.csv": (summary, None),
        "comparisons.csv": (_flat_comparisons(data), None),
        "statistics.csv": (data.summary, None),
        "calibration.csv": (spearman, None),
        "reliability.csv": (reliability, None),
        "detection.csv": (data.detection, _DETECTION_COLUMNS),
        "surface.csv": (data.surface, _SURFACE_COLUMNS),
        "forest.csv": (forest, None),
        "failures.csv": (data.failures, ["run", "reason", "n"]),
        "cases.csv": (
            cases,
            [
                "which",
                "rank",
                "run",
                "model",
                "variant",
                "key",
                "prompt_index",
                "value",
                "score",
                "dice",
                "consistency_std",
                "mask_key",
            ],
        ),
    }
    paths = []
    for name, (rows, cols) in tables.items():
        _write_table(out / name, rows, cols)
        paths.append(out / name)
    return paths
