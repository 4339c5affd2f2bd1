"""The golden segment rows: box, point and auto prompt runs on phantoms, embedded (sam_tiny, CPU, SQLite).

``collect_rows`` runs the three runs and returns every segment row (all columns but ids and timestamps, the mask
key relative to the store) with the image's pixel spacing and its mask as COCO RLE. ``compare_rows`` checks two
such lists with tolerances that a change of instruction set cannot break and a real change cannot pass (each
tolerance below says what it protects). ``python -m tests.pipeline.golden [OUT.json]`` records the fixture file
``golden_rows.json`` next to this module.

The checkpoint is :func:`~pixelperfect.pipeline.model.weights.seeded_tiny_sam`: numpy-seeded weights, the same bytes
on every CPU (the file records their SHA-256; torch's seeded initialisers gave other weights under ATen's default
kernels than under AVX2/AVX-512), masks that are blobs with steep edges rather than a checkerboard of near-zero
logits, and logits scaled ``LOGIT_GAIN`` times so that SAM's stability band (±1) holds only the edges. Between
the AVX-512, AVX2 and default kernels of this machine 97 % of the raw logits differ in their last bits, yet 1-2
pixels of 600 masks flip (``python -m tests.pipeline.isa_check`` shows it).
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from scipy import ndimage

GOLDEN = Path(__file__).with_name("golden_rows.json")
N_IMAGES = 4
RUNS = ("auto", "box", "point")
CHECKPOINT_SEED = 2  # of 18 seeds tried, the one whose chosen masks cover 20-60 % of the phantoms in blobs
LOGIT_GAIN = 200.0  # mask logits ~20 instead of ~0.1: a mask's stability (logits beyond ±1) becomes a measure
POINT_SPACING_MM = (0.672, 0.672)  # the point run's --pixel-spacing (phantoms' 0.168 mm at 1024² -> 256²): mm rows
AUTO_NMS_IOU = 0.6  # no candidate box IoU within 0.044 of it (at 0.7, SAM's default, one was 0.003 away)
_SKIP = {"id", "run_id", "image_id", "mask_key"}

# --- tolerances ------------------------------------------------------------------------------------------------
#: Model outputs (predicted IoUs of all candidates, their std across the jittered prompts). Protects: the encoder,
#: the decoder and the prompt geometry. Between instruction sets they moved by <= 1e-6 here; a prompt box moved by
#: one pixel moved its scores by 8e-3 and 1.3e-2, CLAHE's clip 5.0 -> 4.5 by 3.8e-3 to 6.5e-3 (test_stages.py).
SCORE_ABS = 1e-4
#: Masks: at least this IoU with the golden mask ...
MASK_IOU = 0.999
#: ... and at most this many differing pixels. Protects: thresholding, upscaling to the image, the PNG round trip.
#: A flipped pixel needs a logit within ~1e-6 of the threshold: 1-2 pixels of 600 masks between instruction sets;
#: the mutations above changed 413-2,279 pixels of a mask.
MASK_PX = 8
#: The choice among SAM's three candidates is compared only when the best beats the runner-up by this much (ten
#: times SCORE_ABS: a difference the score tolerance allows can then not swap them).
CHOSEN_MARGIN = 10 * SCORE_ABS
#: Automatic mode keeps grid points by score, area and box NMS: its row count is compared only when no candidate
#: is within these of a threshold (recorded in the golden file, ``auto_margins``).
AUTO_SCORE_MARGIN = 10 * SCORE_ABS
AUTO_AREA_MARGIN = MASK_PX  # px: an area change the mask budget allows cannot cross ``min_area``
AUTO_NMS_MARGIN = 0.02  # box IoU: an edge moved 2 px changes the IoU of boxes >= 200 px wide by less
#: A differing pixel changes the boundary (4-neighbour) at itself and its 4 neighbours, and whether the truth's
#: boundary pixels within the NSD tolerance (<= 3 px here: 2 px, or 2 mm at 0.672 mm) + 1 of it are within
#: tolerance: at most 5 + 5 + 2·(2·3 + 3) boundary counts per differing pixel.
NSD_COUNTS_PER_PIXEL = 28


@dataclass
class Comparison:
    """What ``compare_rows`` found: ``diffs`` (a failure each) and ``skipped`` (fields not compared, and why)."""

    diffs: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


# --- the golden run ---------------------------------------------------------------------------------------------


def write_checkpoint(path: Path) -> str:
    """Write the golden ``sam_tiny`` checkpoint to ``path``; return the SHA-256 of its weights."""
    from pixelperfect.pipeline.model.weights import TinyConfig, seeded_tiny_sam, tiny_checkpoint_bytes, weights_sha256

    cfg = TinyConfig()
    sam = seeded_tiny_sam(CHECKPOINT_SEED, cfg, logit_gain=LOGIT_GAIN)
    path.write_bytes(tiny_checkpoint_bytes(sam, cfg))
    return weights_sha256(sam)


def collect_rows(
    tmp: Path,
    phantom_dir: Path,
    checkpoint: Path,
    *,
    runs: Sequence[str] = RUNS,
    n_images: int = N_IMAGES,
    labels: Path | None = None,
    box_variants: Sequence[str] = ("raw", "clahe"),
) -> list[dict[str, Any]]:
    """Run box (``box_variants``), point and auto (raw) prompts over the first ``n_images`` phantoms; return the
    rows ordered by run, image key, variant and prompt index. ``labels``: the box and auto runs' annotations
    (default the phantoms' own)."""
    from pycocotools import mask as coco_mask
    from sqlalchemy import select

    from pixelperfect.db.models import Image, Run, Segment
    from pixelperfect.db.session import session_scope
    from pixelperfect.embedded import SubmitRequest, submit
    from pixelperfect.pipeline.options import AutoSettings, ProcessSettings
    from pixelperfect.storage import open_store
    from tests.conftest import embedded_settings

    settings = embedded_settings(tmp)
    images = tmp / "images"
    images.mkdir()
    for path in sorted((phantom_dir / "images").iterdir())[:n_images]:
        shutil.copy(path, images / path.name)
    points_csv = tmp / "points.csv"
    points_csv.write_text("key,x,y,label\nphantom-00000,100,120,1\nphantom-00000,30,30,0\nphantom-00001,60,90,1\n")
    annotations = str(labels or phantom_dir / "labels.csv")
    common: dict[str, Any] = dict(
        source=str(images),
        model="sam_tiny",
        checkpoint=str(checkpoint),
        batch_size=3,
        gt_masks=str(phantom_dir / "masks"),
    )
    auto = ProcessSettings(
        auto=AutoSettings(points_per_side=4, min_score=0.0, min_stability=0.0, lung_only=False, nms_iou=AUTO_NMS_IOU)
    )
    requests = {
        "box": SubmitRequest(**common, run="box", variants=list(box_variants), annotations=annotations),
        "point": SubmitRequest(**common, run="point", variants=["raw"], prompts="points", points=str(points_csv),
                               process=ProcessSettings(pixel_spacing=POINT_SPACING_MM)),
        "auto": SubmitRequest(**common, run="auto", variants=["raw"], prompts="auto", process=auto,
                              annotations=annotations),
    }  # fmt: skip
    for name in runs:
        submit(requests[name], settings)
    store = open_store(settings.store_url)
    root = settings.store_url.rstrip("/") + "/"
    out: list[dict[str, Any]] = []
    with session_scope(settings.database_url) as session:
        query = (
            select(Run.name, Image.key, Image.meta, Segment)
            .join(Image, Segment.image_id == Image.id)
            .join(Run, Segment.run_id == Run.id)
            .order_by(Run.name, Image.key, Segment.variant, Segment.prompt_index)
        )
        for run_name, key, meta, seg in session.execute(query):
            row: dict[str, Any] = {"run": run_name, "image": key, "spacing_mm": (meta or {}).get("spacing_mm")}
            for column in Segment.__table__.columns:
                if column.name not in _SKIP:
                    row[column.name] = getattr(seg, column.name)
            assert seg.mask_key is not None and seg.mask_key.startswith(root), seg.mask_key
            relative = seg.mask_key[len(root) :]
            row["mask_key"] = relative
            mask = cv2.imdecode(np.frombuffer(store.get(relative), np.uint8), cv2.IMREAD_GRAYSCALE) > 0
            rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
            row["mask_rle"] = {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}
            out.append(row)
    return out


def decode_mask(rle: dict[str, Any]) -> np.ndarray:
    """A ``mask_rle`` entry -> ``(H, W)`` bool."""
    from pycocotools import mask as coco_mask

    return coco_mask.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")}).astype(bool)


# --- automatic mode's margins -----------------------------------------------------------------------------------


@contextmanager
def recording_auto_margins() -> Iterator[dict[str, dict[str, float]]]:
    """While active, every automatic-mode image records how far its candidates are from the decisions that pick
    its prompts (``{image key: margins}``): predicted IoU and stability from their thresholds, area from
    ``min_area`` (px), box IoUs from the NMS threshold, the score gap between boxes NMS compares, and the score
    gap at the ``max_masks`` cut. Embedded runs only (it patches this process's ``auto_seeds``)."""
    import torch
    from segment_anything.utils.amg import batched_mask_to_box
    from torchvision.ops import box_iou

    from pixelperfect.pipeline.prompt import auto

    found: dict[str, dict[str, float]] = {}
    original = auto.auto_seeds

    def measuring(image: Any, embedding: Any, segmenter: Any, settings: Any) -> np.ndarray:
        cfg = settings.auto
        points = auto.grid_points(*image.pixels.shape[:2], cfg.points_per_side)
        pred = segmenter.predict_points(embedding, points[:, None, :], np.ones((len(points), 1), np.int64))
        best, stability = pred.best_scores.astype(np.float64), pred.stability.astype(np.float64)
        areas = np.count_nonzero(pred.masks, axis=(1, 2))
        kept = (best >= cfg.min_score) & (stability >= cfg.min_stability) & (areas > settings.min_area)
        margins = {
            "score": float(np.min(np.abs(best - cfg.min_score))),
            "stability": float(np.min(np.abs(stability - cfg.min_stability))),
            "area_px": float(np.min(np.abs(areas - settings.min_area))),
            "nms_iou": math.inf,
            "nms_score": math.inf,
            "max_masks_score": math.inf,
        }
        if kept.sum() > 1:  # greedy NMS as torchvision runs it: best score first, against the boxes kept so far
            boxes = batched_mask_to_box(torch.from_numpy(pred.masks[kept])).float() + torch.tensor([0.0, 0, 1, 1])
            ious, scores = box_iou(boxes, boxes).numpy(), best[kept]
            order = np.argsort(-scores, kind="stable")
            survivors: list[int] = []
            iou_margins, score_gaps = [], []
            for i in order:
                if survivors:
                    rival = max(survivors, key=lambda j: ious[i, j])
                    iou_margins.append(abs(ious[i, rival] - cfg.nms_iou))
                    if ious[i, rival] > cfg.nms_iou:  # suppressed by it: swapping their order would swap the outcome
                        score_gaps.append(abs(scores[i] - scores[rival]))
                if not survivors or ious[i, survivors].max() <= cfg.nms_iou:
                    survivors.append(int(i))
            margins["nms_iou"] = float(min(iou_margins))
            margins["nms_score"] = float(min(score_gaps, default=math.inf))
        seeds = original(image, embedding, segmenter, settings)
        if len(seeds) == cfg.max_masks and kept.sum() > cfg.max_masks:
            order = np.sort(best[kept])[::-1]
            margins["max_masks_score"] = float(order[cfg.max_masks - 1] - order[cfg.max_masks])
        found[image.key] = margins
        return seeds

    auto.auto_seeds = measuring
    try:
        yield found
    finally:
        auto.auto_seeds = original


@contextmanager
def recording_jitter_areas() -> Iterator[dict[str, int]]:
    """While active, every scored prompt records the size of its smallest jittered mask (those masks are not
    stored), keyed by :func:`mask_digest` of its own mask: what bounds how far ``consistency_iou`` may move.
    Embedded runs only (it patches this process's ``score.consistency``)."""
    from pixelperfect.pipeline.score import segments as score

    found: dict[str, int] = {}
    original = score.consistency

    def measuring(base: np.ndarray, perturbed: np.ndarray, perturbed_scores: np.ndarray) -> dict[str, Any]:
        if len(perturbed):
            found[mask_digest(base)] = int(np.count_nonzero(perturbed, axis=(1, 2)).min())
        return original(base, perturbed, perturbed_scores)

    score.consistency = measuring  # type: ignore[assignment]
    try:
        yield found
    finally:
        score.consistency = original


def mask_digest(mask: np.ndarray) -> str:
    """SHA-256 of a bool mask's bits and shape (a key, not a comparison)."""
    return hashlib.sha256(np.packbits(mask.astype(bool)).tobytes() + repr(mask.shape).encode()).hexdigest()


def auto_count_reason(margins: dict[str, float]) -> str | None:
    """Why an automatic-mode image's row count may legitimately differ on another CPU, or ``None`` when its
    margins are large enough to compare it exactly."""
    small = [
        f"{name} {value:.3g} < {limit:g}"
        for name, value, limit in (
            ("score margin", margins["score"], AUTO_SCORE_MARGIN),
            ("stability margin", margins["stability"], AUTO_SCORE_MARGIN),
            ("area margin", margins["area_px"], AUTO_AREA_MARGIN),
            ("NMS IoU margin", margins["nms_iou"], AUTO_NMS_MARGIN),
            ("NMS score gap", margins["nms_score"], AUTO_SCORE_MARGIN),
            ("max_masks score gap", margins["max_masks_score"], AUTO_SCORE_MARGIN),
        )
        if value <= limit
    ]
    return "; ".join(small) or None


# --- comparison ----------------------------------------------------------------------------------------------------


def without_inputs(row: dict[str, Any]) -> dict[str, Any]:
    """``row`` without what the run was given: the prompt, the jittered prompts' coordinates (their scores stay)
    and ``box_dice`` (the prompt box's own Dice with the truth). A comparison of these can only fail on what the
    pipeline computed."""
    out = {k: v for k, v in row.items() if k not in ("prompt", "box_dice")}
    if out.get("perturbations") is not None:
        out["perturbations"] = [p[-1] for p in out["perturbations"]]
    return out


def _key(row: dict[str, Any]) -> tuple[Any, ...]:
    return row["run"], row["image"], row["variant"], row["prompt_index"]


def compare_rows(
    got: Sequence[dict[str, Any]],
    want: Sequence[dict[str, Any]],
    *,
    auto_margins: dict[str, dict[str, float]] | None = None,
    jitter_min_area: dict[str, int] | None = None,
    min_area: int = 250,
) -> Comparison:
    """Compare segment rows (``collect_rows``' shape, or :func:`without_inputs` of it) field by field, each with
    the tolerance that belongs to it; rows are matched by run, image, variant and prompt index."""
    result = Comparison()
    got_by, want_by = {_key(r): r for r in got}, {_key(r): r for r in want}
    for image, margins in sorted((auto_margins or {}).items()):
        reason = auto_count_reason(margins)
        if reason is None:
            continue
        result.skipped.append(f"auto/{image}: row count and rows not compared ({reason})")
        for keys in (got_by, want_by):
            for k in [k for k in keys if k[0] == "auto" and k[1] == image]:
                del keys[k]
    for k in sorted(set(got_by) ^ set(want_by)):
        result.diffs.append(f"{'/'.join(map(str, k))}: {'only in got' if k in got_by else 'missing'}")
    for k in sorted(set(got_by) & set(want_by)):
        where = "/".join(map(str, k))
        ctx = _Context(MASK_PX, None, None, min_area, want_by[k], (jitter_min_area or {}).get(where))
        _compare_row(got_by[k], want_by[k], where, ctx, result)
    return result


def _close(got: Any, want: Any, tol: float) -> bool:
    if got is None or want is None:
        return got is None and want is None
    return math.isfinite(float(got)) and abs(float(got) - float(want)) <= tol


def _compare_row(got: dict[str, Any], want: dict[str, Any], where: str, ctx: _Context, out: Comparison) -> None:
    if set(got) != set(want):
        out.diffs.append(f"{where}: fields {sorted(set(got) ^ set(want))} differ")
    fields = set(got) & set(want)
    unknown = fields - set(_RULES) - {"mask_rle"}
    if unknown:  # a new column: it needs a rule (and a comment saying what it protects) before it is compared
        out.diffs.append(f"{where}: no comparison rule for {sorted(unknown)}")
    if "mask_rle" in fields:
        g_mask, w_mask = decode_mask(got["mask_rle"]), decode_mask(want["mask_rle"])
        if g_mask.shape != w_mask.shape:
            out.diffs.append(f"{where}.mask: shape {g_mask.shape} != {w_mask.shape}")
            return
        n = int(np.count_nonzero(g_mask ^ w_mask))
        union = int(np.count_nonzero(g_mask | w_mask))
        mask_iou = 1.0 if union == 0 else 1.0 - n / union
        if n > MASK_PX or mask_iou < MASK_IOU:
            out.diffs.append(f"{where}.mask: {n} px differ (budget {MASK_PX}), IoU {mask_iou:.5f} (>= {MASK_IOU})")
            n = max(n, MASK_PX)  # the derived fields are then held to the budget's tolerances
        ctx.n, ctx.got_mask, ctx.want_mask = n, g_mask, w_mask
    # rows without masks (unit tests of single fields) keep n = MASK_PX: a mask the budget allows
    for name in sorted(fields & set(_RULES)):
        try:
            problem = _RULES[name](got[name], want[name], ctx)
        except _Skip as skip:
            out.skipped.append(f"{where}.{name}: {skip}")
            continue
        if problem:
            out.diffs.append(f"{where}.{name}: {got[name]!r} != {want[name]!r} ({problem})")


@dataclass
class _Context:
    n: int  # pixels that differ between the two masks (<= MASK_PX when the masks agree)
    got_mask: np.ndarray | None
    want_mask: np.ndarray | None
    min_area: int
    want: dict[str, Any]
    jitter_min_area: int | None = None  # the golden prompt's smallest jittered mask (recorded), px

    @property
    def area(self) -> int:
        return int(self.want.get("area") or 0)

    def fraction(self, pixels: int, size: int) -> float:
        """How far a ratio over ``size`` pixels moves when ``pixels`` of them change: ``2·pixels / size``."""
        return 2.0 * pixels / max(size - pixels, 1)


class _Skip(Exception):
    """A field not compared for this row; the message says why."""


def _exact(got: Any, want: Any, ctx: _Context) -> str | None:
    return None if got == want else "must be equal"


def _score(got: Any, want: Any, ctx: _Context) -> str | None:
    """Predicted IoUs (a number, a list, or the scores of ``perturbations``): within SCORE_ABS."""
    if isinstance(want, list) or isinstance(got, list):
        if not (isinstance(want, list) and isinstance(got, list)) or len(got) != len(want):
            return "lengths differ"
        problems = [_score(g, w, ctx) for g, w in zip(got, want, strict=True)]
        return next((p for p in problems if p), None)
    return None if _close(got, want, SCORE_ABS) else f"tolerance {SCORE_ABS:g}"


def _perturbations(got: Any, want: Any, ctx: _Context) -> str | None:
    """Jittered prompts: coordinates exactly (integers, drawn from the seed), the score within SCORE_ABS."""
    if got is None or want is None or len(got) != len(want):
        return None if got == want else "lengths differ"
    for g, w in zip(got, want, strict=True):
        g, w = (g, w) if isinstance(w, list) else ([g], [w])  # without_inputs keeps the scores alone
        if g[:-1] != w[:-1]:
            return "jittered prompts differ"
        if not _close(g[-1], w[-1], SCORE_ABS):
            return f"score tolerance {SCORE_ABS:g}"
    return None


def _chosen(got: Any, want: Any, ctx: _Context) -> str | None:
    """SAM's candidate choice: exact where the best beats the runner-up by CHOSEN_MARGIN, else not compared."""
    scores = sorted((s for s in (ctx.want.get("scores") or []) if s is not None), reverse=True)
    if len(scores) >= 2 and scores[0] - scores[1] <= CHOSEN_MARGIN:
        raise _Skip(f"the best candidate leads by {scores[0] - scores[1]:.2g} <= {CHOSEN_MARGIN:g}")
    return _exact(got, want, ctx)


def _area(got: Any, want: Any, ctx: _Context) -> str | None:
    """Pixel count: within the pixels by which the masks differ (its mask is compared, this follows from it)."""
    return None if _close(got, want, ctx.n) else f"tolerance {ctx.n} px"


def _mask_ratio(got: Any, want: Any, ctx: _Context) -> str | None:
    """Overlaps of this mask with fixed sets (Dice/IoU with the truth, fraction inside the prompt): the differing
    pixels move them by at most ``2n / (area - n)``; equal masks give equal values."""
    tol = ctx.fraction(ctx.n, ctx.area) if ctx.n else 1e-12
    return None if _close(got, want, tol) else f"tolerance {tol:.3g} for {ctx.n} px"


def _budget_ratio(got: Any, want: Any, ctx: _Context) -> str | None:
    """Ratios over logits that are not stored (stability: logits beyond ±1; consistency to the base mask: the
    jittered masks): each may move by the pixel budget, ``2·MASK_PX / (area - MASK_PX)``."""
    tol = ctx.fraction(MASK_PX, ctx.area)
    return None if _close(got, want, tol) else f"tolerance {tol:.3g}"


def _pairwise(got: Any, want: Any, ctx: _Context) -> str | None:
    """Mean IoU between the K jittered masks (not stored): each pair moves by at most ``2·MASK_PX / size`` of the
    smaller; their smallest size is recorded with the golden file (``jitter_min_area``), else bounded by
    ``m·area`` with ``m = 1 - K·(1 - consistency_iou_base)`` (an IoU of m with the base needs m of its size)."""
    smallest = ctx.jitter_min_area
    if smallest is None:
        base, k = ctx.want.get("consistency_iou_base"), len(ctx.want.get("perturbations") or [])
        smallest = int((1.0 - k * (1.0 - base)) * ctx.area) if base is not None else 0
    if got is not None and want is not None and smallest <= 2 * MASK_PX:
        raise _Skip(f"the jittered masks may be as small as {smallest} px: a pixel budget cannot bound their IoU")
    tol = ctx.fraction(MASK_PX, smallest)
    return None if _close(got, want, tol) else f"tolerance {tol:.3g}"


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    ys, xs = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    return None if len(ys) == 0 else (int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1)


def _box_iou(got: Any, want: Any, ctx: _Context) -> str | None:
    """IoU of the mask's tight box with a fixed box: equal boxes give equal values; when an edge moved by ``e`` px
    the box's area changes by at most ``e·2(w + h) + 4e²``, so the IoU by at most twice that over the box's area."""
    if ctx.got_mask is None or ctx.want_mask is None:
        return _exact(got, want, ctx)
    g, w = _bbox(ctx.got_mask), _bbox(ctx.want_mask)
    if g is None or w is None:
        return _exact(got, want, ctx)
    e = max(abs(a - b) for a, b in zip(g, w, strict=True))
    width, height = w[2] - w[0], w[3] - w[1]
    change = e * 2 * (width + height) + 4 * e * e
    tol = 2.0 * change / max(width * height - change, 1) if e else 1e-12
    return None if _close(got, want, tol) else f"tolerance {tol:.3g} for box edges moved {e} px"


def _surface_step(ctx: _Context) -> float:
    """One pixel in the row's surface unit: px, or the larger spacing in mm."""
    spacing = ctx.want.get("spacing_mm")
    return float(max(spacing)) if ctx.want.get("surface_unit") == "mm" and spacing else 1.0


def _hd95(got: Any, want: Any, ctx: _Context) -> str | None:
    """HD95 against the truth: equal masks give equal values; differing pixels (on the boundary, where flips
    happen) may move it by one pixel, in the row's unit."""
    tol = _surface_step(ctx) if ctx.n else 1e-9
    return None if _close(got, want, tol) else f"tolerance {tol:g} {ctx.want.get('surface_unit')}"


def _nsd(got: Any, want: Any, ctx: _Context) -> str | None:
    """NSD against the truth: equal masks give equal values; else each differing pixel moves at most
    NSD_COUNTS_PER_PIXEL boundary counts out of at least the golden mask's boundary size."""
    if not ctx.n or ctx.want_mask is None:
        return None if _close(got, want, 1e-12) else "equal masks must give equal NSD"
    boundary = int(np.count_nonzero(ctx.want_mask & ~ndimage.binary_erosion(ctx.want_mask, border_value=0)))
    tol = NSD_COUNTS_PER_PIXEL * ctx.n / max(boundary, 1)
    return None if _close(got, want, tol) else f"tolerance {tol:.3g} for {ctx.n} px"


def _components(mask: np.ndarray) -> list[int]:
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    return [int(stats[i, cv2.CC_STAT_AREA]) for i in range(1, n)]


def _mask_boxes(got: Any, want: Any, ctx: _Context) -> str | None:
    """Boxes of the mask's components larger than ``min_area``: equal masks give equal boxes. Differing pixels can
    move an edge by at most as many pixels, but can also join or split components, or carry one across
    ``min_area``: then the field is not compared (the mask itself is)."""
    if not ctx.n:
        return _exact(got, want, ctx)
    if ctx.got_mask is not None and ctx.want_mask is not None:
        g_parts, w_parts = _components(ctx.got_mask), _components(ctx.want_mask)
        near = [a for a in g_parts + w_parts if abs(a - ctx.min_area) <= ctx.n]
        if len(g_parts) != len(w_parts) or near:
            raise _Skip(
                f"{ctx.n} differing px joined or split components ({len(g_parts)} vs {len(w_parts)})"
                if len(g_parts) != len(w_parts)
                else f"a component of {near[0]} px is within {ctx.n} px of min_area {ctx.min_area}"
            )
    if got is None or want is None or len(got) != len(want):
        return None if got == want else "number of boxes differs"
    moved = max((abs(a - b) for g, w in zip(got, want, strict=True) for a, b in zip(g, w, strict=True)), default=0)
    return None if moved <= ctx.n else f"an edge moved {moved} px > {ctx.n}"


_RULES: dict[str, Callable[[Any, Any, _Context], str | None]] = {
    # identity and inputs: what the run was asked, compared exactly
    "run": _exact,
    "image": _exact,
    "variant": _exact,
    "prompt_index": _exact,
    "prompt_kind": _exact,
    "prompt": _exact,
    "mask_key": _exact,
    "surface_unit": _exact,
    "spacing_mm": _exact,
    # box_dice: the prompt box's own Dice with the truth, no model output in it: exact
    "box_dice": _exact,
    # model outputs
    "score": _score,
    "scores": _score,
    "consistency_std": _score,  # the std of SCORE_ABS-accurate scores moves by at most SCORE_ABS
    "perturbations": _perturbations,
    "chosen": _chosen,
    # derived from this row's mask
    "area": _area,
    "dice": _mask_ratio,
    "iou": _mask_ratio,
    "inside_box": _mask_ratio,
    "box_iou": _box_iou,
    "hd95": _hd95,
    "nsd": _nsd,
    "mask_boxes": _mask_boxes,
    # derived from logits that are not stored
    "stability": _budget_ratio,
    "consistency_iou_base": _budget_ratio,
    "consistency_iou": _pairwise,
}


# --- recording ------------------------------------------------------------------------------------------------------


def main(argv: list[str]) -> None:
    """Write the golden file: ``python -m tests.pipeline.golden [OUT]`` (phantoms as the fixture ``phantom_dir``
    makes them, the checkpoint as ``write_checkpoint``)."""
    from pixelperfect.pipeline.options import ProcessSettings
    from pixelperfect.synthetic.phantoms import write_phantoms

    out = Path(argv[0]) if argv else GOLDEN
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        write_phantoms(tmp / "phantoms", 12, seed=3, size=256)
        weights = write_checkpoint(tmp / "sam_tiny.pth")
        (tmp / "run").mkdir()
        with recording_auto_margins() as margins, recording_jitter_areas() as jittered:
            rows = collect_rows(tmp / "run", tmp / "phantoms", tmp / "sam_tiny.pth")
    digests = [mask_digest(decode_mask(r["mask_rle"])) for r in rows]
    by_mask = {d: "/".join(map(str, _key(r))) for d, r in zip(digests, rows, strict=True) if digests.count(d) == 1}
    golden = {
        "about": "python -m tests.pipeline.golden; compared by tests/pipeline/test_stages.py",
        "checkpoint": {"seed": CHECKPOINT_SEED, "logit_gain": LOGIT_GAIN, "weights_sha256": weights},
        "min_area": ProcessSettings().min_area,
        "auto_margins": margins,
        "jitter_min_area": dict(sorted((by_mask[d], area) for d, area in jittered.items() if d in by_mask)),
        "rows": rows,
    }
    out.write_text(json.dumps(golden, indent=None, separators=(",", ":")) + "\n")
    for image, m in sorted(margins.items()):
        print(f"auto {image}: {auto_count_reason(m) or 'row count compared exactly'} {m}")
    print(f"{len(rows)} rows -> {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
