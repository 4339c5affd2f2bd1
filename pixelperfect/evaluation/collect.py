"""Everything the report shows, gathered from the database once: summaries, comparisons, calibration,
detection, the forest and the gallery cases. No rendering here (see :mod:`pixelperfect.evaluation.build`).

Memory does not grow with the run: aggregates come from ``GROUP BY`` queries (:mod:`pixelperfect.db.queries`);
paired comparisons and rank correlations stream only their columns into float arrays that live for one
comparison (:mod:`pixelperfect.db.streams`); what a figure keeps is a seeded sample of at most
:data:`SCATTER_POINTS` points with the full count beside it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import text
from sqlalchemy.orm import Session

from pixelperfect.config import RANDOM_CHECKPOINT
from pixelperfect.db import queries, repo, streams, windows
from pixelperfect.db.models import Run
from pixelperfect.evaluation import forest
from pixelperfect.evaluation.challenge import box_agreement
from pixelperfect.evaluation.detection import array_precisions, challenge_windows, threshold_sweep
from pixelperfect.evaluation.sampled import CALIBRATION_MAX_ROWS, capped_pairs
from pixelperfect.evaluation.stats import PREDICTORS, PairedComparison, calibration, paired_comparison
from pixelperfect.evaluation.units import surface_summary, unit_notes, variant_surface
from pixelperfect.pipeline.options import PromptMode

#: Measures compared pairwise (before/after preprocessing, run against run), in this order.
COMPARE_METRICS: tuple[str, ...] = ("consistency_std", "consistency_iou", "score", "dice")
#: Measures of the summary statistics table (NSD and HD95 are apart, per unit: ``evaluation/units.py``). A new
#: measure is a segments column named here and, for the JSON contract's means, in :data:`JSON_MEANS`; its label
#: and unit go in ``figures.LABELS``.
SUMMARY_METRICS: tuple[str, ...] = (*queries.METRICS, "box_iou", "box_dice")
JSON_MEANS = ("score", "stability", "consistency_std", "consistency_iou", "dice", "iou", "box_dice")
GALLERY_N = 3  # best and worst cases of each run
#: PostgreSQL ``work_mem`` for the report's transaction (per sort or hash, on the server).
WORK_MEM = "64MB"
#: Points a scatter plot draws at most: a seeded sample above it (the title gives the full count).
SCATTER_POINTS = 20_000


class Comparison(PairedComparison):
    """One paired comparison in ``report.json``: ``kind`` (``variant``, ``run`` or ``prompt``), the ``metric``,
    each side (``run``, ``variant``; a prompt comparison's sides also name the ``mask``), and the statistics."""

    kind: str
    metric: str
    a: dict[str, str]
    b: dict[str, str]


@dataclass(frozen=True)
class RunInfo:
    id: int
    name: str
    model: str
    variants: list[str]
    prompt_mode: str
    source_url: str
    settings: dict[str, Any]
    checkpoint: str | None = None
    checkpoint_sha256: str | None = None


@dataclass(frozen=True)
class Pairs:
    """What a paired figure needs from one comparison: ``a``/``b`` float32 values of at most
    :data:`SCATTER_POINTS` seeded pairs, ``n`` pairs in all, and ``box_a``/``box_b`` box-plot statistics of all
    pairs, or of the comparison's ``sample_n`` when subsampled (:mod:`pixelperfect.evaluation.sampled`): ``med``,
    ``q1``, ``q3``, ``whislo`` = p10, ``whishi`` = p90."""

    a: np.ndarray
    b: np.ndarray
    n: int
    box_a: dict[str, float]
    box_b: dict[str, float]


@dataclass
class ReportData:
    runs: list[RunInfo]
    summary: list[dict[str, Any]]
    failures: list[dict[str, Any]]
    comparisons: list[Comparison] = field(default_factory=list)
    pairs: list[tuple[Comparison, Pairs]] = field(default_factory=list)
    calibration: list[dict[str, Any]] = field(default_factory=list)  # run, variant, prompt_mode + a Calibration
    #: (run, variant) -> (scores, Dice) of at most SCATTER_POINTS seeded segments, and the count they stand for
    calibration_points: dict[tuple[str, str], tuple[np.ndarray, np.ndarray, int]] = field(default_factory=dict)
    detection: list[dict[str, Any]] = field(default_factory=list)
    forest: list[dict[str, Any]] = field(default_factory=list)
    surface: list[dict[str, Any]] = field(default_factory=list)  # per run x variant x unit (mm | px)
    notes: list[str] = field(default_factory=list)  # shown at the top (e.g. units that differ)
    rank_metric: str = "dice"
    best: list[dict[str, Any]] = field(default_factory=list)
    worst: list[dict[str, Any]] = field(default_factory=list)
    #: section -> sentences explaining what a section leaves out (runs without shared variants, auto prompts, ...)
    section_notes: dict[str, list[str]] = field(default_factory=dict)

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

    def note(self, section: str, text: str) -> None:
        self.section_notes.setdefault(section, []).append(text)


def collect(session: Session, run_names: list[str], *, full: bool = True) -> ReportData:
    """Read the runs ``run_names`` (in that order; the first is the baseline of run comparisons).

    ``full=False`` reads only what ``report.json`` carries (summaries, surface distances, comparisons, detection)
    and leaves calibration, the forest and the gallery cases out."""
    if not run_names:
        raise ValueError("give at least one run")
    ids = queries.run_ids_by_name(session, names=run_names)
    if queries.is_postgresql(session):  # sorts and hashes of a large run in memory, not in temporary files
        session.execute(text(f"SET LOCAL work_mem = '{WORK_MEM}'"))
    runs = []
    for name, rid in ids.items():
        row = session.get(Run, rid)
        if row is None:  # pragma: no cover - run_ids_by_name found it in this session
            raise LookupError(f"no run named {name!r}")
        variants = [v["name"] for v in row.variants]
        runs.append(RunInfo(rid, name, row.model, variants, row.prompt_mode, row.source_url, dict(row.settings or {}),
                            row.checkpoint, row.checkpoint_sha256))  # fmt: skip
    run_ids = [r.id for r in runs]
    summary = queries.metric_summary(session, run_ids=run_ids, metrics=SUMMARY_METRICS)
    groups = [(s.pop("run_id"), s["run"], s["variant"], s) for s in summary]
    data = ReportData(runs=runs, summary=summary, failures=queries.failure_summary(session, run_ids=run_ids))
    data.surface = surface_summary(session, run_ids=run_ids)
    data.notes = unit_notes(data.surface)
    _comparisons(session, data)
    _prompt_comparisons(session, data, groups)
    _detection(session, data)
    if not full:
        return data
    _calibration(session, data, groups)
    _forest(session, data, groups)
    has_dice = any(s.get("dice_n") for s in data.summary)
    data.rank_metric = "dice" if has_dice else "score"
    for rid in run_ids:  # per run, so one poor model does not fill the whole gallery
        data.worst += queries.ranked_cases(session, run_ids=[rid], metric=data.rank_metric, n=GALLERY_N, worst=True)
        data.best += queries.ranked_cases(session, run_ids=[rid], metric=data.rank_metric, n=GALLERY_N, worst=False)
    for case in data.worst + data.best:
        case["truth_boxes"] = repo.boxes_for(session, run_id=ids[case["run"]], keys=[case["key"]]).get(case["key"], [])
    return data


def run_info(session: Session, name: str) -> RunInfo:
    """The report's view of run ``name``; ``LookupError`` when there is none."""
    rid = queries.run_ids_by_name(session, names=[name])[name]
    row = session.get(Run, rid)
    if row is None:  # pragma: no cover - run_ids_by_name found it in this session
        raise LookupError(f"no run named {name!r}")
    variants = [v["name"] for v in row.variants]
    return RunInfo(rid, name, row.model, variants, row.prompt_mode, row.source_url, dict(row.settings or {}),
                   row.checkpoint, row.checkpoint_sha256)  # fmt: skip


def compare_pair(session: Session, a: tuple[str, str], b: tuple[str, str]) -> tuple[list[Comparison], list[str]]:
    """The report's paired comparisons of ``b`` = ``(run, variant)`` against ``a`` (kind ``variant`` within one
    run, ``run`` across two), computed exactly as :func:`collect` does, with the notes saying why there are none."""
    run_a, run_b = run_info(session, a[0]), run_info(session, b[0])
    data = ReportData(runs=[run_a, run_b], summary=[], failures=[])
    _compare(session, data, "variant" if a[0] == b[0] else "run", (run_a, a[1]), (run_b, b[1]))
    return data.comparisons, [t for texts in data.section_notes.values() for t in texts]


def _box(values: np.ndarray) -> dict[str, float]:
    p10, q1, med, q3, p90 = (float(v) for v in np.percentile(values, [10, 25, 50, 75, 90]))
    return {"med": med, "q1": q1, "q3": q3, "whislo": p10, "whishi": p90}


def sample_index(n: int, k: int = SCATTER_POINTS, seed: int = 0) -> np.ndarray:
    """Sorted indices of a seeded sample of ``min(n, k)`` of ``n`` items (all of them when ``n <= k``)."""
    if n <= k:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, k, replace=False))


def _add_comparison(
    data: ReportData,
    kind: str,
    metric: str,
    side_a: dict[str, str],
    side_b: dict[str, str],
    va: Any,
    vb: Any,
    exact: dict[str, Any] | None = None,
) -> None:
    """One paired comparison of ``metric`` (``b`` against ``a``) into the report and its figures' sample; ``exact``:
    sums over all pairs when ``va``/``vb`` are a subsample (:func:`sampled.capped_pairs`)."""
    va, vb = np.asarray(va), np.asarray(vb)
    entry: Comparison = {
        "kind": kind,
        "metric": metric,
        "a": side_a,
        "b": side_b,
        **paired_comparison(va, vb, lower_is_better=metric in queries.LOWER_IS_BETTER, exact=exact),
    }
    data.comparisons.append(entry)
    keep = sample_index(len(va))
    data.pairs.append((entry, Pairs(va[keep].copy(), vb[keep].copy(), entry["n"], _box(va), _box(vb))))


def _compare(session: Session, data: ReportData, kind: str, a: tuple[RunInfo, str], b: tuple[RunInfo, str]) -> None:
    found = False
    blocks = streams.paired_blocks(session, a=(a[0].id, a[1]), b=(b[0].id, b[1]), metrics=COMPARE_METRICS)
    pairs = capped_pairs(blocks, len(COMPARE_METRICS))
    for metric, (va, vb, exact) in zip(COMPARE_METRICS, pairs, strict=True):
        if not len(va):
            continue
        found = True
        side_a, side_b = {"run": a[0].name, "variant": a[1]}, {"run": b[0].name, "variant": b[1]}
        _add_comparison(data, kind, metric, side_a, side_b, va, vb, exact)
    del pairs
    if not found:
        why = "; automatic prompts are not paired" if PromptMode.auto in (a[0].prompt_mode, b[0].prompt_mode) else ""
        data.note(kind, f"{a[0].name} / {a[1]} and {b[0].name} / {b[1]} share no segmented prompt{why}.")


def _comparisons(session: Session, data: ReportData) -> None:
    """Each run's preprocessing variants against its baseline (``raw`` if present, else its first variant), then
    every further run against the first on their shared variants (e.g. fine-tuned against the original model),
    and a run fine-tuned from another run's checkpoint (its ``config.json`` says so: :func:`training_links`)
    against that run when it is not the first."""
    for run in data.runs:
        base = "raw" if "raw" in run.variants else run.variants[0]
        for v in run.variants:
            if v != base:
                _compare(session, data, "variant", (run, base), (run, v))
    first = data.runs[0]
    for other in data.runs[1:]:
        shared = [v for v in first.variants if v in other.variants]
        if not shared:
            data.note("run", f"{other.name} shares no variant with {first.name}: "
                             f"{', '.join(other.variants)} against {', '.join(first.variants)}.")  # fmt: skip
        for v in shared:
            _compare(session, data, "run", (first, v), (other, v))
    for base_run, tuned in training_links(data.runs):  # fine-tuned from a run other than the first: compared too
        if base_run is not first:
            for v in [v for v in base_run.variants if v in tuned.variants]:
                _compare(session, data, "run", (base_run, v), (tuned, v))


def training_base(checkpoint: str | None) -> str | None:
    """The ``base_checkpoint_sha256`` that ``pixelperfect train`` recorded in the ``config.json`` beside
    ``checkpoint`` (``random-<model>`` for a model fine-tuned from seeded random weights), or ``None`` when the
    checkpoint has no such record (not one of ours, or unreadable)."""
    import json

    from pixelperfect.storage import read_url

    if not checkpoint or checkpoint == RANDOM_CHECKPOINT or "/" not in checkpoint:
        return None
    try:
        config = json.loads(read_url(checkpoint.rsplit("/", 1)[0] + "/config.json"))
        base = config["model"]["base_checkpoint_sha256"]
    except Exception:  # no record: nothing links this run
        return None
    return str(base) if base else None


def training_links(runs: list[RunInfo]) -> list[tuple[RunInfo, RunInfo]]:
    """``(base run, fine-tuned run)`` pairs among ``runs``: the tuned run's checkpoint records (``config.json``)
    that it was trained from the base run's checkpoint (same sha256, or the same model's random weights)."""
    links = []
    for tuned in runs:
        base_hash = training_base(tuned.checkpoint)
        if base_hash is None:
            continue
        for base in runs:
            same = base.checkpoint_sha256 is not None and base.checkpoint_sha256 == base_hash
            random = base.checkpoint == RANDOM_CHECKPOINT and base_hash == f"random-{base.model}"
            if base is not tuned and (same or random):
                links.append((base, tuned))
    return links


def _prompt_comparisons(session: Session, data: ReportData, groups: list[tuple[int, str, str, dict[str, Any]]]) -> None:
    """Per run × variant with ground truth: the model's Dice against its own prompt box's Dice on the same
    segments (kind ``prompt``) — does the mask add anything to the box it was given?"""
    by_group = {(run_id, variant): s for run_id, _, variant, s in groups}
    for run in data.runs:  # in the order of the runs and their variants
        for variant in run.variants:
            s = by_group.get((run.id, variant), {})
            if not (s.get("dice_n") and s.get("box_dice_n")):
                continue
            blocks = streams.own_pair_blocks(session, run_id=run.id, variant=variant, a="box_dice", b="dice")
            [(box_dice, dice, exact)] = capped_pairs(blocks, 1)
            side_a = {"run": run.name, "variant": variant, "mask": "prompt box"}
            side_b = {"run": run.name, "variant": variant, "mask": run.model}
            _add_comparison(data, "prompt", "dice", side_a, side_b, box_dice, dice, exact)


def _calibration(session: Session, data: ReportData, groups: list[tuple[int, str, str, dict[str, Any]]]) -> None:
    """Reliability bins in the database; the Spearman correlations of each predictor with the Dice from the
    group's predictor columns (float64, one group at a time); a seeded sample of (score, Dice) for the figure."""
    for run_id, name, variant, s in groups:
        if not s.get("dice_n"):
            continue
        bins = queries.reliability_bins(session, run_id=run_id, variant=variant)
        n = int(s["dice_n"])  # above the cap: a seeded sample of the segments for the Spearman correlations
        where = streams.sample_clause(n, CALIBRATION_MAX_ROWS)
        cols = streams.metric_columns(
            session, run_id=run_id, variant=variant, metrics=[*PREDICTORS, "dice"], required="dice", where=where
        )
        if len(cols) > CALIBRATION_MAX_ROWS:
            cols = cols[sample_index(len(cols), CALIBRATION_MAX_ROWS)]
        entry = calibration(bins, cols, n_target=n)
        data.calibration.append({"run": name, "variant": variant, **entry, "sample_n": len(cols)})
        score, dice = cols[:, 0], cols[:, -1]
        has = np.isfinite(score)
        keep = sample_index(int(has.sum()))
        shown = int(has.sum()) if where is None else sum(int(b["n"]) for b in bins)  # bins: score and Dice
        data.calibration_points[(name, variant)] = (score[has][keep], dice[has][keep], shown)
        del cols


def _detection(session: Session, data: ReportData) -> None:
    """Per run × variant with ground-truth boxes: a run with automatic (or point) prompts gets the RSNA challenge
    metric over its labelled images, negatives included (``rsna_score``; ``rsna_score_positives`` without the
    negatives); a box-prompted run, prompted by the very boxes it would be scored against, gets the same formula
    under its honest name, ``box_agreement`` (:mod:`pixelperfect.evaluation.challenge`)."""
    for run in data.runs:
        if not run.settings.get("annotations"):
            data.note("detection", f"{run.name} has no ground-truth boxes (submit with --annotations).")
            continue
        fast = None  # PostgreSQL, box prompts: every variant in one windowed pass of flat float arrays
        if run.prompt_mode == PromptMode.boxes and queries.is_postgresql(session):
            fast = _box_agreement_windows(session, run.id, run.variants)
        challenge = None  # other prompts, either database: labelled images, one window of flat arrays at a time
        if run.prompt_mode != PromptMode.boxes:
            challenge = challenge_windows(
                windows.labelled_windows(session, run_id=run.id, variants=run.variants), run.variants
            )
        sweep = None  # concept runs: the instance-score threshold their precision and recall choose
        if run.prompt_mode == PromptMode.concept:
            sweep = threshold_sweep(
                windows.labelled_windows(session, run_id=run.id, variants=run.variants), run.variants
            )
        for v in run.variants:
            entry: dict[str, Any] = {"run": run.name, "variant": v, "prompt_mode": run.prompt_mode}
            if run.prompt_mode == PromptMode.boxes:
                found = fast.get(v) if fast is not None else None
                entry.update(measure="box_agreement", **(found or box_agreement(session, run_id=run.id, variant=v)))
            else:
                assert challenge is not None
                result = dict(challenge[v])
                entry.update(measure="rsna_challenge", rsna_score=result.pop("score"),
                             rsna_score_positives=result.pop("score_positives"), **result)  # fmt: skip
                if sweep is not None:
                    entry.update(sweep[v])
            data.detection.append(entry)


def _box_agreement_windows(session: Session, run_id: int, variants: list[str]) -> dict[str, dict[str, Any]]:
    """:func:`box_agreement` of every variant from :func:`streams.detection_windows`: the challenge formula over
    the done images that have a ground-truth box, scored a window of images at a time
    (:func:`array_precisions`, checked against the per-image definition in ``tests/evaluation``)."""
    sums = {v: [0.0, 0] for v in variants}
    for truth, preds in streams.detection_windows(session, run_id=run_id, variants=variants):
        annotated = np.unique(truth[:, 0])
        for v, pred in preds.items():
            images = np.union1d(truth[:, 0], pred[:, 0])
            values = array_precisions(truth, pred)[np.isin(images, annotated)]
            values = values[np.isfinite(values)]
            sums[v][0] += float(values.sum())
            sums[v][1] += int(values.size)
    return {v: {"box_agreement": (t / n if n else None), "images": int(n)} for v, (t, n) in sums.items()}


def _forest(session: Session, data: ReportData, groups: list[tuple[int, str, str, dict[str, Any]]]) -> None:
    prompts = {r.id: r.prompt_mode for r in data.runs}
    for run_id, name, variant, s in groups:
        # box-prompted runs: every segment with a consistency std has its perturbations (no count over the group)
        known = s.get("consistency_std_n") if prompts[run_id] == PromptMode.boxes else None
        rows, total = streams.forest_rows(session, run_id=run_id, variant=variant, cap=forest.MAX_ROWS, total=known)
        result = forest.consistency_forest(rows, total=total)
        if result["n"]:
            data.forest.append({"run": name, "variant": variant, **result})
