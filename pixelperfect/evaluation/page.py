"""The HTML report: one :class:`ReportData` through Jinja2 templates (``evaluation/templates``) into one
self-contained page.

Each section is a small function returning its template's context; :data:`SECTIONS` lists them in page order,
so a new section (say the RSNA challenge metric with labelled negatives) is a function, a template and a line.
Figures are PNG data URIs from :mod:`pixelperfect.evaluation.figures`; their size does not depend on the run's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import numpy as np
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from pixelperfect.config import Settings
from pixelperfect.evaluation import figures
from pixelperfect.evaluation.collect import SUMMARY_METRICS, ReportData
from pixelperfect.evaluation.findings import LIMITS, MIN_EFFECT, findings
from pixelperfect.evaluation.forest import MAX_ROWS
from pixelperfect.evaluation.sampled import PAIRED_MAX_PAIRS
from pixelperfect.evaluation.stats import BOOTSTRAP_MAX_PAIRS

log = logging.getLogger(__name__)
CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222;padding:0 1em}
h1{font-size:1.6em}h2{margin-top:2em;border-bottom:1px solid #ccc}table{border-collapse:collapse;margin:.8em 0}
td,th{border:1px solid #ddd;padding:3px 7px;font-size:13px;text-align:right}th{background:#f3f3f3}
td.l,th.l{text-align:left}img.fig{max-width:100%}.gallery{display:flex;flex-wrap:wrap;gap:12px}
figure{margin:0;font-size:12px;max-width:256px}p.note{color:#555;font-size:14px}p.warn{background:#fff3cd;padding:6px}p.warn{background:#fff3cd;padding:6px}
"""
COMPARISON_COLUMNS = [
    ("metric", "metric"),
    ("a", "a"),
    ("b", "b"),
    ("n", "n"),
    ("mean_a", "mean a"),
    ("mean_b", "mean b"),
    ("mean_diff", "mean b−a"),
    ("fraction_improved", "b better"),
    ("wilcoxon_p", "Wilcoxon p"),
    ("ci_low", "95% CI low"),
    ("ci_high", "CI high"),
]
PAIRED_FIGURES = ("consistency_std", "dice")  # metrics drawn as paired scatter plots, at most 8 panels each


def fmt(value: Any, digits: int = 3) -> str:
    """A table cell: ``–`` for a missing value, floats to ``digits`` decimals (small ones in ``g`` form)."""
    if value is None:
        return "–"
    if isinstance(value, float | np.floating):
        value = float(value)
        return f"{value:.{digits}g}" if abs(value) < 1e-3 and value != 0 else f"{value:.{digits}f}"
    return str(value)


def _side(side: dict[str, Any]) -> str:
    """A comparison's side as a label: ``run / variant``, and which mask when both sides are one run's."""
    label = f"{side['run']} / {side['variant']}"
    return f"{label} ({side['mask']})" if "mask" in side else label


def findings_section(data: ReportData, settings: Settings) -> dict[str, Any]:
    """The opening block: :func:`findings.findings` of the report's comparisons, as sentences."""
    items = findings(data.comparisons)
    sentences = [f["sentence"] for f in items] or ["Nothing to compare: one run with one variant and no prompt "
                                                   "boxes scored against ground truth."]  # fmt: skip
    thresholds = ", ".join(f"{v:g} in {m}" for m, v in MIN_EFFECT.items())
    return {"sentences": sentences, "limits": LIMITS, "thresholds": thresholds}


def summary_section(data: ReportData, settings: Settings) -> dict[str, Any]:
    grabcut = any(r.model == "grabcut" for r in data.runs)
    cols = [("run", "run"), ("model", "model"), ("variant", "variant"), ("n_segments", "segments")]
    cols += [
        (f"{m}_mean", f"mean {m}") for m in ("score", "stability", "consistency_std", "consistency_iou", "dice", "iou")
    ]
    if grabcut:
        cols.append(("box_fallbacks", "GrabCut box fallbacks"))
    stat_cols = [("run", "run"), ("variant", "variant")]
    for m in SUMMARY_METRICS:
        stat_cols += [(f"{m}_median", f"{m} median"), (f"{m}_p10", "p10"), (f"{m}_p90", "p90")]
    segmented = {s["run"] for s in data.summary if s["n"]}
    failed = {f["run"] for f in data.failures}
    return {
        "rows": [{"run": r["run"], "model": r["model"], **v} for r in data.runs_json() for v in r["variants"]],
        "columns": cols,
        "grabcut": grabcut,
        "stats": data.summary,
        "stat_columns": stat_cols,
        "failures": data.failures,
        "only_failed": [
            f"{r.name}: every finished image failed; no segment to evaluate."
            for r in data.runs
            if r.name in failed and r.name not in segmented
        ],
    }


def _comparison(data: ReportData, kind: str, intro: list[str]) -> dict[str, Any]:
    titles = {
        "variant": lambda c: f"{c['a']['run']}: {c['a']['variant']} → {c['b']['variant']}",
        "run": lambda c: f"{c['a']['variant']}: {c['a']['run']} → {c['b']['run']}",
        "prompt": lambda c: f"{c['a']['run']} / {c['a']['variant']}: box → {c['b']['mask']}",
    }
    entries = [c for c in data.comparisons if c["kind"] == kind]
    shown = []
    for metric in PAIRED_FIGURES:
        pairs = [
            (titles[kind](c), _side(c["a"]), _side(c["b"]), p)
            for c, p in data.pairs
            if c["kind"] == kind and c["metric"] == metric
        ]
        if pairs:
            shown.append((figures.paired_figure(pairs[:8], metric), f"{kind} comparison of {metric}"))
    big = [c for c in entries if c.get("bootstrap_n") and c["bootstrap_n"] < c["n"]]
    subsampled = (
        f"{len(big)} comparison(s) have more than {BOOTSTRAP_MAX_PAIRS:,} pairs: their bootstrap CI resamples a "
        f"seeded subsample of {BOOTSTRAP_MAX_PAIRS:,} pairs; n, means and shares use every pair, Wilcoxon p "
        f"every pair up to {PAIRED_MAX_PAIRS:,}."
        if big
        else ""
    )
    capped = [c for c in entries if c.get("sample_n", c["n"]) < c["n"]]
    if capped:
        sizes = ", ".join(sorted({f"{c['sample_n']:,}" for c in capped}))
        subsampled += (
            f" {len(capped)} comparison(s) have more than {PAIRED_MAX_PAIRS:,} pairs: their Wilcoxon p, box plots "
            f"and figures use a seeded subsample ({sizes} pairs); n, means and shares use every pair."
        )
    return {
        "intro": intro,
        "show": bool(entries),
        "rows": [{**c, "a": _side(c["a"]), "b": _side(c["b"])} for c in entries],
        "columns": COMPARISON_COLUMNS,
        "figures": shown,
        "subsampled": subsampled,
        "notes": data.section_notes.get(kind, []),
    }


def variant_section(data: ReportData, settings: Settings) -> dict[str, Any]:
    return _comparison(
        data,
        "variant",
        [
            "Each point is one prompt, paired across variants of the same run (same "
            "image, same prompt, same jitter). Below the diagonal = lower consistency std (more consistent)"
            " after preprocessing."
        ],
    )


def run_section(data: ReportData, settings: Settings) -> dict[str, Any]:
    if len(data.runs) < 2:
        return {
            **_comparison(data, "run", ["Give a second run (e.g. a fine-tuned model on the same images) to compare."]),
            "show": False,
        }
    intro = f"Every further run against the first ({data.runs[0].name}) on the same images and prompts."
    return _comparison(data, "run", [intro])


def prompt_section(data: ReportData, settings: Settings) -> dict[str, Any]:
    if not any(c["kind"] == "prompt" for c in data.comparisons):
        return {
            **_comparison(data, "prompt", ["No segment has both a box prompt and a ground-truth mask."]),
            "show": False,
        }
    return _comparison(
        data,
        "prompt",
        [
            "Dice of each mask against the Dice of its own prompt box, filled, on the "
            "same ground truth: a model that returned its box unchanged would score the box's Dice. b "
            "better = the mask beats its box."
        ],
    )


def distributions_section(data: ReportData, settings: Settings) -> dict[str, Any]:
    groups: dict[str, dict[str, dict[str, float]]] = {}
    for s in data.summary:
        stats = {}
        for m in figures.LABELS:
            if s.get(f"{m}_n"):
                keys = ("med", "q1", "q3", "whislo", "whishi")
                stats[m] = dict(zip(keys, (s[f"{m}_{p}"] for p in ("median", "p25", "p75", "p10", "p90")), strict=True))
        groups[f"{s['run']}/{s['variant']}"] = stats
    return {"figure": figures.distributions_figure(groups, list(figures.LABELS))}


def calibration_section(data: ReportData, settings: Settings) -> dict[str, Any]:
    rows = [
        {
            "run": c["run"],
            "variant": c["variant"],
            "n": c["n"],
            "ece": c["ece"],
            **{f"rho_{p}": s["rho"] for p, s in c["spearman"].items()},
        }
        for c in data.calibration
    ]
    entries = []
    for c in data.calibration:
        score, dice, n = data.calibration_points.get((c["run"], c["variant"]), (np.zeros(0), np.zeros(0), 0))
        if n:
            entries.append((f"{c['run']} / {c['variant']}", score, dice, n, c["reliability"]))
    bins = [
        {"run": c["run"], "variant": c["variant"], "bin": f"{b['lo']:.1f}–{b['hi']:.1f}", **b}
        for c in data.calibration
        for b in c["reliability"]
        if b["n"]
    ]
    return {
        "rows": rows,
        "columns": [
            ("run", "run"),
            ("variant", "variant"),
            ("n", "n"),
            ("rho_score", "ρ score"),
            ("rho_stability", "ρ stability"),
            ("rho_consistency_std", "ρ consistency std"),
            ("rho_consistency_iou", "ρ consistency IoU"),
            ("ece", "ECE"),
        ],
        "figure": figures.calibration_figure(entries) if entries else None,
        "bins": bins,
        "bin_columns": [
            ("run", "run"),
            ("variant", "variant"),
            ("bin", "score bin"),
            ("n", "n"),
            ("score_mean", "mean score"),
            ("dice_mean", "mean Dice"),
        ],
    }


def surface_section(data: ReportData, settings: Settings) -> dict[str, Any]:
    """NSD and HD95 per run × variant × unit: mm and px rows apart, with counts, never one mean."""
    return {
        "rows": data.surface,
        "columns": [
            ("run", "run"),
            ("variant", "variant"),
            ("unit", "unit"),
            ("n", "segments"),
            ("nsd_tolerance", "NSD tolerance"),
            ("nsd_mean", "mean NSD"),
            ("hd95_n", "HD95 defined"),
            ("hd95_mean", "mean HD95"),
        ],
    }


def detection_section(data: ReportData, settings: Settings) -> dict[str, Any]:
    """The RSNA challenge metric of runs with automatic prompts; box-prompted runs' box agreement, named so."""
    return {
        "rows": [{**d, "value": d.get("rsna_score", d.get("box_agreement"))} for d in data.detection],
        "columns": [
            ("run", "run"),
            ("variant", "variant"),
            ("prompt_mode", "prompts"),
            ("measure", "measure"),
            ("value", "score"),
            ("images", "images counted"),
            ("labelled", "labelled"),
            ("negatives", "negatives"),
            ("negatives_predicted", "negatives predicted on"),
            ("rsna_score_positives", "score without negatives"),
        ],
        "sweep_columns": [
            ("run", "run"),
            ("variant", "variant"),
            ("score_threshold", "chosen threshold"),
            ("precision", "precision"),
            ("recall", "recall"),
            ("f1", "F1"),
            ("rsna_score_at_threshold", "score at threshold"),
            ("presence_positives", "positives found"),
            ("presence_negatives", "negatives predicted on"),
        ],
        "sweep_rows": [d for d in data.detection if d.get("prompt_mode") == "concept"],
        "notes": data.section_notes.get("detection", []),
    }


def forest_section(data: ReportData, settings: Settings) -> dict[str, Any]:
    fitted = [
        (f"{f['run']} / {f['variant']}", f["y_test"], f["y_pred"], f["r2"]) for f in data.forest if f["r2"] is not None
    ]
    return {
        "rows": data.forest,
        "columns": [
            ("run", "run"),
            ("variant", "variant"),
            ("n_total", "segments"),
            ("n_train", "train"),
            ("n_test", "test"),
            ("r2", "held-out R²"),
            ("importance_boxes", "importance boxes"),
            ("importance_scores", "importance scores"),
            ("note", "note"),
        ],
        "figure": figures.forest_figure(fitted) if fitted else None,
        "max_rows": MAX_ROWS,
    }


def gallery_section(data: ReportData, settings: Settings) -> dict[str, Any]:
    from pixelperfect.evaluation.gallery import tiles

    groups = [
        (f"{title} {len(cases)} by {data.rank_metric}", tiles(cases, data.rank_metric, settings, fmt))
        for title, cases in (("worst", data.worst), ("best", data.best))
    ]
    return {
        "groups": groups,
        "cases": [{"which": "worst", **c} for c in data.worst] + [{"which": "best", **c} for c in data.best],
        "columns": [
            ("which", ""),
            ("run", "run"),
            ("variant", "variant"),
            ("key", "image key"),
            ("prompt_index", "prompt"),
            ("value", data.rank_metric),
            ("score", "score"),
        ],
    }


Builder = Callable[[ReportData, Settings], dict[str, Any]]
#: The page's sections in order: (id, title, template, context builder).
SECTIONS: list[tuple[str, str, str, Builder]] = [
    ("findings", "Findings", "findings", findings_section),
    ("summary", "Summary", "summary", summary_section),
    ("surface", "Surface distances", "surface", surface_section),
    ("variants", "Consistency before vs after preprocessing", "comparison", variant_section),
    ("runs", "With vs without fine-tuning (run against run)", "comparison", run_section),
    ("prompt", "Model against its prompt box", "comparison", prompt_section),
    ("distributions", "Distributions per variant and model", "distributions", distributions_section),
    ("calibration", "Calibration: Dice against the model's confidence", "calibration", calibration_section),
    ("detection", "Detection: RSNA challenge metric", "detection", detection_section),
    ("forest", "Random-forest consistency regressor", "forest", forest_section),
    ("gallery", "Gallery: best and worst cases", "gallery", gallery_section),
]


def environment() -> Environment:
    env = Environment(
        loader=PackageLoader("pixelperfect.evaluation", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["fmt"] = fmt
    return env


def render_html(data: ReportData, settings: Settings) -> str:
    sections = []
    for sid, title, template, build in SECTIONS:
        sections.append(
            {"id": sid, "title": title, "template": f"sections/{template}.html.j2", **build(data, settings)}
        )
    runs_line = ", ".join(f"{r.name} ({r.model}, {r.prompt_mode}: {', '.join(r.variants)})" for r in data.runs)
    return (
        environment()
        .get_template("report.html.j2")
        .render(
            css=CSS,
            runs_line=runs_line,
            generated=f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
            notes=data.notes,
            sections=sections,
        )
    )
