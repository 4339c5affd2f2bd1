"""The report's figures as ``data:image/png;base64`` URIs (matplotlib's Agg canvas, no pyplot global state).

Every function takes plain arrays and returns a string that can go straight into an ``<img src>``, so the HTML
report is one self-contained file. Sizes do not grow with the run: scatter plots get a seeded sample of at most
``collect.SCATTER_POINTS`` points (their titles give the full count), box plots are drawn from precomputed
statistics (quartiles, whiskers at the 10th and 90th percentiles) with :meth:`Axes.bxp`, never from raw values.
OpenCV is imported by the gallery tiles only.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

#: Axis labels of the measures (with their unit where they have one); a new measure adds its line here.
LABELS = {
    "score": "predicted IoU (score)",
    "stability": "stability",
    "consistency_std": "consistency std (lower = more consistent)",
    "consistency_iou": "consistency IoU",
    "dice": "Dice vs ground truth",
    "iou": "IoU vs ground truth",
}
TILE_SIZE = 256  # gallery tiles: the long side in px


def _uri(fig: Figure) -> str:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _grid(n: int, per_row: int = 3, size: tuple[float, float] = (4.2, 3.4)) -> tuple[Figure, list[Any]]:
    rows, cols = (n + per_row - 1) // per_row, min(n, per_row)
    fig = Figure(figsize=(size[0] * cols, size[1] * rows), layout="constrained")
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(n)]
    return fig, axes


def _bxp(ax: Any, stats: Sequence[dict[str, float]], labels: Sequence[str]) -> None:
    """Box plots from statistics (``med``, ``q1``, ``q3``, ``whislo``, ``whishi``): no raw values, no fliers."""
    ax.bxp([{**s, "label": lab, "fliers": []} for s, lab in zip(stats, labels, strict=True)], widths=0.6,
           showfliers=False)  # fmt: skip


def paired_figure(pairs: Sequence[tuple[str, str, str, Any]], metric: str) -> str:
    """One panel per comparison ``(title, label a, label b, collect.Pairs)``: each sampled prompt a point at
    ``(a, b)`` with the diagonal (below it = ``b`` lower), and beside it the box plots of all ``a`` and ``b``."""
    per_row = 2
    rows = (len(pairs) + per_row - 1) // per_row
    cols = min(len(pairs), per_row)
    fig = Figure(figsize=(6.0 * cols, 4.0 * rows), layout="constrained")
    grid = fig.add_gridspec(rows, 2 * cols, width_ratios=[3, 1] * cols)
    for i, (title, la, lb, p) in enumerate(pairs):
        r, c = divmod(i, per_row)
        ax, box = fig.add_subplot(grid[r, 2 * c]), fig.add_subplot(grid[r, 2 * c + 1])
        lo = float(min(p.a.min(), p.b.min(), p.box_a["whislo"], p.box_b["whislo"]))
        hi = float(max(p.a.max(), p.b.max(), p.box_a["whishi"], p.box_b["whishi"]))
        pad = (hi - lo) * 0.05 or 0.01
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="grey", lw=1, ls="--")
        ax.scatter(p.a, p.b, s=10 if len(p.a) < 2000 else 2, alpha=0.6 if len(p.a) < 2000 else 0.25)
        shown = f"n={p.n:,}" if len(p.a) == p.n else f"{len(p.a):,} of n={p.n:,} shown"
        ax.set(xlabel=la, ylabel=lb, title=f"{title} ({shown})")
        _bxp(box, [p.box_a, p.box_b], ["a", "b"])
        box.tick_params(labelsize=8)
    fig.suptitle(LABELS.get(metric, metric))
    return _uri(fig)


def distributions_figure(groups: dict[str, dict[str, dict[str, float]]], metrics: Sequence[str]) -> str:
    """A box plot per metric with one box per group (``run / variant``) from its statistics (``med``, ``q1``,
    ``q3``, ``whislo``, ``whishi``); groups without the metric are left out."""
    shown = [m for m in metrics if any(m in g for g in groups.values())]
    fig, axes = _grid(max(len(shown), 1), per_row=3)
    for ax, metric in zip(axes, shown, strict=False):
        names = [name for name, g in groups.items() if metric in g]
        _bxp(ax, [groups[n][metric] for n in names], names)
        ax.set_title(LABELS.get(metric, metric), fontsize=10)
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    if not shown:
        axes[0].text(0.5, 0.5, "no values", ha="center")
    return _uri(fig)


def calibration_figure(entries: Sequence[tuple[str, np.ndarray, np.ndarray, int, list[dict[str, Any]]]]) -> str:
    """Dice against predicted IoU per ``(label, sampled scores, their Dice, segments in all, reliability bins)``,
    with the bins' mean Dice (over all segments) and the diagonal a calibrated score would follow."""
    fig, axes = _grid(len(entries), per_row=3)
    for ax, (label, score, dice, n, bins) in zip(axes, entries, strict=True):
        ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--")
        ax.scatter(score, dice, s=8 if len(score) < 2000 else 2, alpha=0.5 if len(score) < 2000 else 0.2)
        full = [b for b in bins if b["n"]]
        ax.plot([b["score_mean"] for b in full], [b["dice_mean"] for b in full], "o-", color="C3", label="bin mean")
        shown = f"n={n:,}" if len(score) == n else f"{len(score):,} of n={n:,} shown"
        ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="predicted IoU", ylabel="Dice", title=f"{label} ({shown})")
        ax.legend(loc="lower right", fontsize=7)
    return _uri(fig)


def forest_figure(entries: Sequence[tuple[str, Sequence[float], Sequence[float], float]]) -> str:
    """Held-out predicted against real consistency std per ``(label, y_test, y_pred, r2)``."""
    fig, axes = _grid(len(entries), per_row=3)
    for ax, (label, y, p, r2) in zip(axes, entries, strict=True):
        lo, hi = min(min(y), min(p)), max(max(y), max(p))
        ax.plot([lo, hi], [lo, hi], color="grey", lw=1, ls="--")
        ax.scatter(y, p, s=10, alpha=0.6)
        ax.set(xlabel="real consistency std", ylabel="forest prediction", title=f"{label}: R² = {r2:.3f}")
    return _uri(fig)


def overlay_tile(
    pixels: np.ndarray,
    mask: np.ndarray | None,
    prompt: Sequence[float] | dict[str, Any] | None,
    truth: np.ndarray | None,
    truth_boxes: Sequence[Sequence[float]] = (),
) -> str:
    """An image with the segment (red fill), its prompt (yellow box or cross), the ground-truth mask (green
    outline) and boxes (green rectangles), scaled to :data:`TILE_SIZE` on the long side, as a PNG data URI."""
    import cv2

    from pixelperfect.pipeline.preprocess.steps import to_uint8

    grey = to_uint8(np.asarray(pixels))
    height, width = grey.shape
    scale = TILE_SIZE / max(height, width)
    size = (max(round(width * scale), 1), max(round(height * scale), 1))
    tile = cv2.cvtColor(cv2.resize(grey, size, interpolation=cv2.INTER_AREA), cv2.COLOR_GRAY2BGR)
    if mask is not None and mask.shape == grey.shape:
        small = cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0
        tile[small] = (0.5 * tile[small] + 0.5 * np.array([40, 40, 230])).astype(np.uint8)
    if truth is not None and truth.shape == grey.shape:
        outline = cv2.resize(truth.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST)
        contours, _ = cv2.findContours(outline, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(tile, contours, -1, (60, 200, 60), 1)
    for box in truth_boxes:
        x1, y1, x2, y2 = (round(float(v) * scale) for v in box)
        cv2.rectangle(tile, (x1, y1), (x2, y2), (60, 200, 60), 1)
    if isinstance(prompt, dict):  # a concept instance: {"concept": phrase, "box": the model's XYXY box}
        prompt = prompt.get("box")
    if prompt is not None and len(prompt) == 4:
        x1, y1, x2, y2 = (round(float(v) * scale) for v in prompt)
        cv2.rectangle(tile, (x1, y1), (x2, y2), (0, 220, 255), 1)
    elif prompt is not None and len(prompt) == 2:
        x, y = (round(float(v) * scale) for v in prompt)
        cv2.drawMarker(tile, (x, y), (0, 220, 255), cv2.MARKER_CROSS, 10, 2)
    ok, buf = cv2.imencode(".png", tile)
    if not ok:  # pragma: no cover - cv2 only fails on invalid arrays
        raise RuntimeError("PNG encoding of a gallery tile failed")
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode("ascii")
