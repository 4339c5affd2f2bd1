"""Everything the report shows, gathered from the database once: summaries, comparisons, calibration,
detection, the forest and the gallery cases. No rendering here (see :mod:`pixelperfect.evaluation.report`)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from pixelperfect.db import queries, repo
from pixelperfect.db.models import Run
from pixelperfect.evaluation.challenge import box_agreement, rsna_challenge
from pixelperfect.evaluation.forest import consistency_forest
from pixelperfect.evaluation.stats import calibration, paired_comparison
from pixelperfect.evaluation.units import surface_summary, unit_notes, variant_surface

#: Measures compared pairwise (before/after preprocessing, run against run), in this order.
COMPARE_METRICS: tuple[str, ...] = ("consistency_std", "consistency_iou", "score", "dice")
#: Measures of the summary statistics table (NSD and HD95 are apart, per unit: ``evaluation/units.py``).
SUMMARY_METRICS: tuple[str, ...] = (*queries.METRICS, "box_iou", "box_dice")
JSON_MEANS = ("score", "stability", "consistency_std", "consistency_iou", "dice", "iou", "box_dice")
GALLERY_N = 3  # best and worst cases of each run


@dataclass
class RunInfo:
    id: int
    name: str
    model: str
    variants: list[str]
    prompt_mode: str
    source_url: str
    settings: dict[str, Any]


@dataclass
class ReportData:
    runs: list[RunInfo]
    summary: list[dict[str, Any]]
    failures: list[dict[str, Any]]
    comparisons: list[dict[str, Any]] = field(default_factory=list)
    pairs: list[tuple[dict[str, Any], np.ndarray, np.ndarray]] = field(default_factory=list)
    segments: list[dict[str, Any]] = field(default_factory=list)
    calibration: list[dict[str, Any]] = field(default_factory=list)
    detection: list[dict[str, Any]] = field(default_factory=list)
    forest: list[dict[str, Any]] = field(default_factory=list)
    surface: list[dict[str, Any]] = field(default_factory=list)  # per run x variant x unit (mm | px)
    notes: list[str] = field(default_factory=list)  # shown at the top (e.g. units that differ)
    rank_metric: str = "dice"
    best: list[dict[str, Any]] = field(default_factory=list)
    worst: list[dict[str, Any]] = field(default_factory=list)

    def runs_json(self) -> list[dict[str, Any]]:
        """``[{"run", "model", "variants": [{"variant", "n_segments", "<m>_mean", ..., "box_fallbacks", "nsd_mean",
        "hd95_mean", "surface_unit", "surface_by_unit"}]}]`` (the JSON contract; ``box_fallbacks``: GrabCut
        segments that are their box, ``None`` for other models; the surface keys: :func:`variant_surface`)."""
        by_key = {(s["run"], s["variant"]): s for s in self.summary}
        out = []
        for run in self.runs:
            variants = []
            for v in run.variants:
                s = by_key.get((run.name, v), {})
                entry: dict[str, Any] = {"variant": v, "n_segments": int(s.get("n", 0))}
                entry.update({f"{m}_mean": s.get(f"{m}_mean") for m in JSON_MEANS})
                entry["box_fallbacks"] = s.get("box_fallbacks")
                entry.update(variant_surface(self.surface, run.name, v))
                variants.append(entry)
            out.append({"run": run.name, "model": run.model, "variants": variants})
        return out


def collect(session: Session, run_names: list[str]) -> ReportData:
    """Read the runs ``run_names`` (in that order; the first is the baseline of run comparisons)."""
    if not run_names:
        raise ValueError("give at least one run")
    ids = queries.run_ids_by_name(session, names=run_names)
    runs = []
    for name, rid in ids.items():
        row = session.get(Run, rid)
        assert row is not None  # run_ids_by_name found it in this session
        runs.append(
            RunInfo(
                rid,
                name,
                row.model,
                [v["name"] for v in row.variants],
                row.prompt_mode,
                row.source_url,
                dict(row.settings or {}),
            )
        )
    run_ids = [r.id for r in runs]
    data = ReportData(
        runs=runs,
        summary=queries.metric_summary(session, run_ids=run_ids, metrics=SUMMARY_METRICS),
        failures=queries.failure_summary(session, run_ids=run_ids),
    )
    data.surface = surface_summary(session, run_ids=run_ids)
    data.notes = unit_notes(data.surface)
    _comparisons(session, data)
    data.segments = queries.segment_rows(
        session, run_ids=run_ids, columns=[*queries.METRICS, "box_dice", "perturbations"]
    )
    _prompt_comparisons(data)
    _calibration(data)
    _detection(session, data)
    _forest(data)
    has_dice = any(s.get("dice_n") for s in data.summary)
    data.rank_metric = "dice" if has_dice else "score"
    for rid in run_ids:  # per run, so one poor model does not fill the whole gallery
        data.worst += queries.ranked_cases(session, run_ids=[rid], metric=data.rank_metric, n=GALLERY_N, worst=True)
        data.best += queries.ranked_cases(session, run_ids=[rid], metric=data.rank_metric, n=GALLERY_N, worst=False)
    for case in data.worst + data.best:
        case["truth_boxes"] = repo.boxes_for(session, run_id=ids[case["run"]], keys=[case["key"]]).get(case["key"], [])
    return data


def _compare(session: Session, data: ReportData, kind: str, a: tuple[RunInfo, str], b: tuple[RunInfo, str]) -> None:
    for metric in COMPARE_METRICS:
        pairs = queries.paired_values(session, a=(a[0].id, a[1]), b=(b[0].id, b[1]), metric=metric)
        if not pairs:
            continue
        side_a, side_b = {"run": a[0].name, "variant": a[1]}, {"run": b[0].name, "variant": b[1]}
        _add_comparison(data, kind, metric, side_a, side_b, [p[2] for p in pairs], [p[3] for p in pairs])


def _add_comparison(
    data: ReportData,
    kind: str,
    metric: str,
    side_a: dict[str, str],
    side_b: dict[str, str],
    values_a: Sequence[float],
    values_b: Sequence[float],
) -> None:
    """One paired comparison of ``metric`` (``b`` against ``a``) into the report and its figures' pairs."""
    va, vb = np.asarray(values_a, np.float64), np.asarray(values_b, np.float64)
    entry = {
        "kind": kind,
        "metric": metric,
        "a": side_a,
        "b": side_b,
        **paired_comparison(va, vb, lower_is_better=metric in queries.LOWER_IS_BETTER),
    }
    data.comparisons.append(entry)
    data.pairs.append((entry, va, vb))


def _comparisons(session: Session, data: ReportData) -> None:
    """Each run's preprocessing variants against its baseline (``raw`` if present, else its first variant), then
    every further run against the first on their shared variants (e.g. fine-tuned against the original model)."""
    for run in data.runs:
        base = "raw" if "raw" in run.variants else run.variants[0]
        for v in run.variants:
            if v != base:
                _compare(session, data, "variant", (run, base), (run, v))
    first = data.runs[0]
    for other in data.runs[1:]:
        for v in first.variants:
            if v in other.variants:
                _compare(session, data, "run", (first, v), (other, v))


def _prompt_comparisons(data: ReportData) -> None:
    """Per run × variant with ground truth: the model's Dice against its own prompt box's Dice on the same
    segments (kind ``prompt``) — does the mask add anything to the box it was given?"""
    groups = _groups(data)
    for run in data.runs:
        for v in run.variants:
            rows = [
                r for r in groups.get((run.name, v), []) if r.get("dice") is not None and r.get("box_dice") is not None
            ]
            if not rows:
                continue
            side_a = {"run": run.name, "variant": v, "mask": "prompt box"}
            side_b = {"run": run.name, "variant": v, "mask": run.model}
            _add_comparison(data, "prompt", "dice", side_a, side_b, [r["box_dice"] for r in rows],
                            [r["dice"] for r in rows])  # fmt: skip


def _groups(data: ReportData) -> dict[tuple[str, str], list[dict[str, Any]]]:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in data.segments:
        groups[(row["run"], row["variant"])].append(row)
    return groups


def _calibration(data: ReportData) -> None:
    for (run, variant), rows in _groups(data).items():
        if any(r["dice"] is not None for r in rows):
            data.calibration.append({"run": run, "variant": variant, **calibration(rows)})


def _detection(session: Session, data: ReportData) -> None:
    """Per run × variant with ground-truth boxes: a run with automatic (or point) prompts gets the RSNA challenge
    metric over its labelled images, negatives included (``rsna_score``; ``rsna_score_positives`` without the
    negatives); a box-prompted run, prompted by the very boxes it would be scored against, gets the same formula
    under its honest name, ``box_agreement`` (:mod:`pixelperfect.evaluation.challenge`)."""
    for run in data.runs:
        if not run.settings.get("annotations"):
            continue
        for v in run.variants:
            entry: dict[str, Any] = {"run": run.name, "variant": v, "prompt_mode": run.prompt_mode}
            if run.prompt_mode == "boxes":
                entry.update(measure="box_agreement", **box_agreement(session, run_id=run.id, variant=v))
            else:
                result = rsna_challenge(session, run_id=run.id, variant=v)
                entry.update(measure="rsna_challenge", rsna_score=result.pop("score"),
                             rsna_score_positives=result.pop("score_positives"), **result)  # fmt: skip
            data.detection.append(entry)


def _forest(data: ReportData) -> None:
    for (run, variant), rows in _groups(data).items():
        result = consistency_forest(rows)
        if result["n"]:
            data.forest.append({"run": run, "variant": variant, **result})
