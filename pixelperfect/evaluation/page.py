"""The HTML report: tables, figures and the gallery of one :class:`ReportData`, in one self-contained page."""

from __future__ import annotations

import html
import logging
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

import cv2
import numpy as np

from pixelperfect.config import Settings
from pixelperfect.evaluation import figures
from pixelperfect.evaluation.collect import SUMMARY_METRICS, ReportData

log = logging.getLogger(__name__)
_CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222;padding:0 1em}
h1{font-size:1.6em}h2{margin-top:2em;border-bottom:1px solid #ccc}table{border-collapse:collapse;margin:.8em 0}
td,th{border:1px solid #ddd;padding:3px 7px;font-size:13px;text-align:right}th{background:#f3f3f3}
td.l,th.l{text-align:left}img.fig{max-width:100%}.gallery{display:flex;flex-wrap:wrap;gap:12px}
figure{margin:0;font-size:12px;max-width:256px}p.note{color:#555;font-size:14px}p.warn{background:#fff3cd;padding:6px}
"""


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e-3 and value != 0 else f"{value:.{digits}f}"
    return html.escape(str(value))


def _table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]], left: int = 0) -> str:
    if not rows:
        return '<p class="note">nothing to show</p>'
    head = "".join(f'<th class="{"l" if i < left else ""}">{html.escape(t)}</th>' for i, (_, t) in enumerate(columns))
    body = "".join(
        "<tr>"
        + "".join(f'<td class="{"l" if i < left else ""}">{_fmt(r.get(k))}</td>' for i, (k, _) in enumerate(columns))
        + "</tr>"
        for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _img(uri: str, alt: str) -> str:
    return f'<img class="fig" alt="{html.escape(alt)}" src="{uri}">'


def _side(side: dict[str, Any]) -> str:
    """A comparison's side as a label: ``run / variant``, and which mask when both sides are one run's."""
    label = f"{side['run']} / {side['variant']}"
    return f"{label} ({side['mask']})" if "mask" in side else label


def _comparison_section(data: ReportData, kind: str) -> str:
    cols = [
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
    rows = [{**c, "a": _side(c["a"]), "b": _side(c["b"])} for c in data.comparisons if c["kind"] == kind]
    parts = [_table(rows, cols, left=3)]
    titles = {
        "variant": lambda c: f"{c['a']['run']}: {c['a']['variant']} → {c['b']['variant']}",
        "run": lambda c: f"{c['a']['variant']}: {c['a']['run']} → {c['b']['run']}",
        "prompt": lambda c: f"{c['a']['run']} / {c['a']['variant']}: box → {c['b']['mask']}",
    }
    for metric in ("consistency_std", "dice"):
        pairs = [
            (titles[kind](c), _side(c["a"]), _side(c["b"]), a, b)
            for c, a, b in data.pairs
            if c["kind"] == kind and c["metric"] == metric
        ]
        if pairs:
            parts.append(_img(figures.paired_figure(pairs[:8], metric), f"{kind} comparison of {metric}"))
    return "".join(parts)


def _gallery(data: ReportData, settings: Settings) -> str:
    from pixelperfect.pipeline.decode import decode_image
    from pixelperfect.storage import open_store, read_url

    def load(url: str) -> np.ndarray | None:
        try:
            raw = cv2.imdecode(np.frombuffer(read_url(url, endpoint_url=settings.s3_endpoint_url), np.uint8), 0)
        except Exception as exc:  # a missing object must not break the report: the tile says so
            log.warning("gallery: cannot read %s: %s", url, exc)
            return None
        return None if raw is None else raw > 0

    parts = []
    for title, cases in (("worst", data.worst), ("best", data.best)):
        tiles = []
        for case in cases:
            try:
                data_bytes = open_store(case["source_url"], endpoint_url=settings.s3_endpoint_url).get(case["key"])
                pixels = decode_image(data_bytes, case["key"]).pixels
            except Exception as exc:
                log.warning("gallery: cannot read image %s: %s", case["key"], exc)
                tiles.append(f"<figure>image {html.escape(case['key'])} unavailable</figure>")
                continue
            mask = load(case["mask_key"]) if case.get("mask_key") else None
            truth = load(case["gt_mask_key"]) if case.get("gt_mask_key") else None
            uri = figures.overlay_tile(pixels, mask, case["prompt"], truth, case.get("truth_boxes", []))
            caption = (
                f"{case['run']} / {case['variant']} — {case['key']} #{case['prompt_index']}: "
                f"{data.rank_metric} {_fmt(case['value'])}, score {_fmt(case['score'])}"
            )
            tiles.append(f"<figure>{_img(uri, caption)}<figcaption>{html.escape(caption)}</figcaption></figure>")
        parts.append(f'<h3>{title} {len(cases)} by {data.rank_metric}</h3><div class="gallery">{"".join(tiles)}</div>')
    return "".join(parts)


def _surface_section(data: ReportData) -> str:
    """NSD and HD95 per run × variant × unit: mm and px rows apart, with counts, never one mean."""
    if not data.surface:
        return ""
    cols = [("run", "run"), ("variant", "variant"), ("unit", "unit"), ("n", "segments"),
            ("nsd_tolerance", "NSD tolerance"), ("nsd_mean", "mean NSD"), ("hd95_n", "HD95 defined"),
            ("hd95_mean", "mean HD95")]  # fmt: skip
    return (
        '<h3>Surface distances</h3><p class="note">NSD (surface Dice) at the run\'s tolerance and HD95 (larger of '
        "the two directed 95th percentiles), in mm where the image's pixel spacing was known (DICOM PixelSpacing, "
        "else ImagerPixelSpacing over the magnification factor, else --pixel-spacing) and in px where not. "
        "The two units are never averaged together.</p>" + _table(data.surface, cols, left=3)
    )


def _detection_section(data: ReportData) -> str:
    """The RSNA challenge metric of runs with automatic prompts; box-prompted runs' box agreement, named so."""
    head = (
        '<h2>Detection: RSNA challenge metric</h2><p class="note">Per image the mean over IoU thresholds '
        "0.40:0.05:0.75 of TP/(TP+FP+FN), the component boxes of the masks ranked by score; the mean over every "
        "labelled image, labelled negatives (RSNA Target = 0) included: one with a prediction scores 0, one with "
        "none is skipped; unlabelled images do not count. Only runs with automatic prompts are detection results. "
        "A box-prompted run was prompted by the very boxes it would be scored against: its number is the "
        "agreement of the boxes drawn around its masks with their prompts (box agreement), not a mAP.</p>"
    )
    rows = [{**d, "value": d.get("rsna_score", d.get("box_agreement"))} for d in data.detection]
    cols = [("run", "run"), ("variant", "variant"), ("prompt_mode", "prompts"), ("measure", "measure"),
            ("value", "score"), ("images", "images counted"), ("labelled", "labelled"),
            ("negatives", "negatives"), ("negatives_predicted", "negatives predicted on"),
            ("rsna_score_positives", "score without negatives")]  # fmt: skip
    return head + _table(rows, cols, 4)


def render_html(data: ReportData, settings: Settings) -> str:
    runs = ", ".join(f"{r.name} ({r.model}, {r.prompt_mode}: {', '.join(r.variants)})" for r in data.runs)
    body = [
        f"<h1>PixelPerfect report</h1><p>{html.escape(runs)}<br>generated "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}</p>"
    ]
    body += [f'<p class="warn"><b>Note:</b> {html.escape(note)}</p>' for note in data.notes]
    body.append("<h2>Summary</h2>")
    summary = [{"run": r["run"], "model": r["model"], **v} for r in data.runs_json() for v in r["variants"]]
    cols = [("run", "run"), ("model", "model"), ("variant", "variant"), ("n_segments", "segments")]
    cols += [
        (f"{m}_mean", f"mean {m}") for m in ("score", "stability", "consistency_std", "consistency_iou", "dice", "iou")
    ]
    if any(r.model == "grabcut" for r in data.runs):
        cols.append(("box_fallbacks", "GrabCut box fallbacks"))
    body.append(_table(summary, cols, left=3))
    if any(r.model == "grabcut" for r in data.runs):
        body.append(
            '<p class="note">GrabCut box fallbacks: segments where the cut collapsed (kept under 10 % of its box on '
            "grey levels and on texture) and the box itself stands as the mask. Their Dice is the box's.</p>"
        )
    stat_cols = [("run", "run"), ("variant", "variant")]
    for m in SUMMARY_METRICS:
        stat_cols += [(f"{m}_median", f"{m} median"), (f"{m}_p10", "p10"), (f"{m}_p90", "p90")]
    body.append("<details><summary>medians and 10th/90th percentiles</summary>")
    body.append(_table(data.summary, stat_cols, left=2) + "</details>")
    body.append(_surface_section(data))
    body.append("<h3>Failed images</h3>" + _table(data.failures, [("run", "run"), ("reason", "reason"), ("n", "n")], 2))

    body.append(
        '<h2>Consistency before vs after preprocessing</h2><p class="note">Each point is one prompt, '
        "paired across variants of the same run (same image, same prompt, same jitter). Below the diagonal"
        " = lower consistency std (more consistent) after preprocessing.</p>"
    )
    body.append(_comparison_section(data, "variant"))
    body.append("<h2>With vs without fine-tuning (run against run)</h2>")
    if len(data.runs) > 1:
        body.append(
            f'<p class="note">Every further run against the first ({html.escape(data.runs[0].name)}) on'
            " the same images and prompts.</p>" + _comparison_section(data, "run")
        )
    else:
        body.append('<p class="note">Give a second run (e.g. a fine-tuned model on the same images) to compare.</p>')

    body.append("<h2>Model against its prompt box</h2>")
    if any(c["kind"] == "prompt" for c in data.comparisons):
        body.append(
            '<p class="note">Dice of each mask against the Dice of its own prompt box, filled, on the same ground'
            " truth: a model that returned its box unchanged would score the box's Dice. b better = the mask beats"
            " its box.</p>" + _comparison_section(data, "prompt")
        )
    else:
        body.append('<p class="note">No segment has both a box prompt and a ground-truth mask.</p>')

    body.append("<h2>Distributions per variant and model</h2>")
    groups: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in data.segments:
        label = f"{row['run']}/{row['variant']}"
        for m in figures.LABELS:
            if row.get(m) is not None:
                groups[label][m].append(float(row[m]))
    arrays = {k: {m: np.asarray(v) for m, v in g.items()} for k, g in groups.items()}
    body.append(_img(figures.distributions_figure(arrays, list(figures.LABELS)), "distributions"))

    body.append("<h2>Calibration: Dice against the model's confidence</h2>")
    if data.calibration:
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
        body.append(
            _table(
                rows,
                [
                    ("run", "run"),
                    ("variant", "variant"),
                    ("n", "n"),
                    ("rho_score", "ρ score"),
                    ("rho_stability", "ρ stability"),
                    ("rho_consistency_std", "ρ consistency std"),
                    ("rho_consistency_iou", "ρ consistency IoU"),
                    ("ece", "ECE"),
                ],
                2,
            )
        )
        entries = []
        seg_groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        for row in data.segments:
            seg_groups[(row["run"], row["variant"])].append(row)
        for c in data.calibration:
            pts = [
                (r["score"], r["dice"])
                for r in seg_groups[(c["run"], c["variant"])]
                if r["score"] is not None and r["dice"] is not None
            ]
            if pts:
                arr = np.asarray(pts)
                entries.append((f"{c['run']} / {c['variant']}", arr[:, 0], arr[:, 1], c["reliability"]))
        if entries:
            body.append(_img(figures.calibration_figure(entries), "calibration"))
        rel = [
            {"run": c["run"], "variant": c["variant"], "bin": f"{b['lo']:.1f}–{b['hi']:.1f}", **b}
            for c in data.calibration
            for b in c["reliability"]
            if b["n"]
        ]
        body.append(
            "<details><summary>reliability table</summary>"
            + _table(
                rel,
                [
                    ("run", "run"),
                    ("variant", "variant"),
                    ("bin", "score bin"),
                    ("n", "n"),
                    ("score_mean", "mean score"),
                    ("dice_mean", "mean Dice"),
                ],
                3,
            )
            + "</details>"
        )
    else:
        body.append('<p class="note">No segment has a Dice: submit with --gt-masks to measure calibration.</p>')

    body.append(_detection_section(data))

    body.append(
        '<h2>Random-forest consistency regressor</h2><p class="note">Features: the K perturbed boxes and'
        " their scores; target: consistency std; R² on a held-out 25 %.</p>"
    )
    body.append(
        _table(
            data.forest,
            [
                ("run", "run"),
                ("variant", "variant"),
                ("n_train", "train"),
                ("n_test", "test"),
                ("r2", "held-out R²"),
                ("importance_boxes", "importance boxes"),
                ("importance_scores", "importance scores"),
                ("note", "note"),
            ],
            2,
        )
    )
    fitted = [
        (f"{f['run']} / {f['variant']}", f["y_test"], f["y_pred"], f["r2"]) for f in data.forest if f["r2"] is not None
    ]
    if fitted:
        body.append(_img(figures.forest_figure(fitted), "forest"))

    body.append(
        '<h2>Gallery: best and worst cases</h2><p class="note">Red: the segment; yellow: its prompt; '
        "green: ground truth.</p>"
    )
    body.append(_gallery(data, settings))
    cases = [{"which": "worst", **c} for c in data.worst] + [{"which": "best", **c} for c in data.best]
    body.append(
        _table(
            cases,
            [
                ("which", ""),
                ("run", "run"),
                ("variant", "variant"),
                ("key", "image key"),
                ("prompt_index", "prompt"),
                ("value", data.rank_metric),
                ("score", "score"),
            ],
            4,
        )
    )
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>PixelPerfect report</title>'
        f"<style>{_CSS}</style></head><body>{''.join(body)}</body></html>"
    )
