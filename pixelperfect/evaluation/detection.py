"""The RSNA Pneumonia Detection Challenge metric over a stream of images, scored a chunk of images at a time.

The definition is :func:`pixelperfect.pipeline.score.metrics.rsna_image_precision`'s (tests check the two agree image
by image): at each IoU threshold 0.40:0.05:0.75, ``TP / (TP + FP + FN)``, predictions taken in descending score
order (ties in their given order), each matched to the unmatched ground-truth box it overlaps most, a hit at
IoU >= the threshold; an image's score is the mean over thresholds; an image without ground truth scores 0 when
anything is predicted and does not count when nothing is. Here the greedy matching runs vectorised over a chunk
of :data:`CHUNK_IMAGES` images padded to the chunk's largest box counts, so a million images cost seconds, not a
Python loop each; nothing but the chunk is held.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

#: The challenge's IoU thresholds: 0.40, 0.45, ..., 0.75 (as in ``pipeline.metrics.RSNA_THRESHOLDS``).
THRESHOLDS: tuple[float, ...] = tuple(round(0.40 + 0.05 * i, 2) for i in range(8))
#: Images scored together: padded arrays of ``CHUNK_IMAGES × max predictions × max truths`` float64.
CHUNK_IMAGES = 4096

Image = tuple[Any, Sequence[Sequence[float]], Sequence[Sequence[float]], Sequence[float]]


def _pad(lists: Sequence[Sequence[Any]], width_of_item: int) -> tuple[np.ndarray, np.ndarray]:
    """``(B, max len, width_of_item)`` float64 (items of ``B`` lists, zero padded) and a ``(B, max len)`` mask.

    One array conversion for the whole chunk: the items are flattened, then scattered to their rows."""
    counts = np.fromiter((len(x) for x in lists), np.int64, count=len(lists))
    width = int(counts.max()) if len(counts) else 0
    out = np.zeros((len(lists), width, width_of_item), np.float64)
    valid = np.zeros((len(lists), width), bool)
    if width:
        flat = np.asarray([item for x in lists for item in x], np.float64).reshape(-1, width_of_item)
        rows = np.repeat(np.arange(len(lists)), counts)
        cols = np.arange(len(flat)) - np.repeat(np.cumsum(counts) - counts, counts)
        out[rows, cols] = flat
        valid[rows, cols] = True
    return out, valid


def _iou(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """``(B, N, M)`` IoU of XYXY boxes, 0 where disjoint or degenerate (``pipeline.scoring.box_iou``'s formula)."""
    a, b = pred[:, :, None, :], truth[:, None, :, :]
    ix = np.maximum(0.0, np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]))
    iy = np.maximum(0.0, np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]))
    inter = ix * iy
    union = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1]) + (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    union = union - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def chunk_precisions(images: Sequence[Image], thresholds: Sequence[float] = THRESHOLDS) -> np.ndarray:
    """Per image ``(key, truth (M, 4), pred (N, 4), scores (N,))``: its challenge score, NaN when it does not
    count. Returns ``(B,)`` float64."""
    for key, _, boxes, scores in images:
        if len(boxes) != len(scores):
            raise ValueError(f"image {key!r}: {len(boxes)} predicted boxes but {len(scores)} scores")
    truth, t_valid = _pad([t for _, t, _, _ in images], 4)
    pred, p_valid = _pad([p for _, _, p, _ in images], 4)
    conf, _ = _pad([s for _, _, _, s in images], 1)
    return _score(truth, t_valid, pred, p_valid, conf[:, :, 0], thresholds)


def _grouped(ids: np.ndarray, values: np.ndarray, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``values`` of image ``ids`` (sorted, each in ``images``) -> ``(B, max per image, k)``, valid mask."""
    rows = np.searchsorted(images, ids)
    starts = np.searchsorted(ids, ids, side="left")  # first row of each row's image (ids are sorted)
    cols = np.arange(len(ids)) - starts
    width = int(cols.max()) + 1 if len(cols) else 0
    out = np.zeros((len(images), width, values.shape[1]), np.float64)
    valid = np.zeros((len(images), width), bool)
    out[rows, cols] = values
    valid[rows, cols] = True
    return out, valid


def array_precisions(truth: np.ndarray, pred: np.ndarray, thresholds: Sequence[float] = THRESHOLDS) -> np.ndarray:
    """The challenge score of every image that has a ground-truth or a predicted box, from flat rows sorted by
    image: ``truth`` ``(M, 5)`` = image id, x1, y1, x2, y2 (in box order); ``pred`` ``(N, 6)`` = image id, x1, y1,
    x2, y2, score (in the order the ties keep). Returns ``(B,)`` float64 over the images in id order."""
    images = np.union1d(truth[:, 0], pred[:, 0])
    t, t_valid = _grouped(truth[:, 0], truth[:, 1:5], images)
    p, p_valid = _grouped(pred[:, 0], pred[:, 1:6], images)
    if p.shape[1] == 0:
        p, p_valid = np.zeros((len(images), 0, 5)), np.zeros((len(images), 0), bool)
    if t.shape[1] == 0:
        t, t_valid = np.zeros((len(images), 0, 4)), np.zeros((len(images), 0), bool)
    return _score(t, t_valid, p[:, :, :4], p_valid, p[:, :, 4], thresholds)


def _score(
    truth: np.ndarray,
    t_valid: np.ndarray,
    pred: np.ndarray,
    p_valid: np.ndarray,
    scores: np.ndarray,
    thresholds: Sequence[float],
) -> np.ndarray:
    """The greedy matching over padded ``(B, M, 4)`` truths and ``(B, N, 4)`` predictions with ``(B, N)`` scores."""
    n_true, n_pred = t_valid.sum(1), p_valid.sum(1)
    out = np.where((n_true == 0) & (n_pred == 0), np.nan, 0.0)
    both = (n_true > 0) & (n_pred > 0)
    if not both.any():
        return out
    truth, t_valid, pred, p_valid = truth[both], t_valid[both], pred[both], p_valid[both]
    conf = np.where(p_valid, -scores[both], np.inf)
    order = np.argsort(conf, axis=1, kind="stable")  # descending score, ties as given, padding last
    pred = np.take_along_axis(pred, order[:, :, None], axis=1)
    p_valid = np.take_along_axis(p_valid, order, axis=1)
    ious = _iou(pred, truth)
    b = np.arange(len(pred))
    m, n = t_valid.sum(1), p_valid.sum(1)
    total = np.zeros(len(pred))
    for t in thresholds:
        matched = ~t_valid
        tp = np.zeros(len(pred), np.int64)
        for r in range(pred.shape[1]):
            row = ious[:, r, :]
            candidates = np.where(~matched & (row >= t), row, -1.0)
            j = np.argmax(candidates, axis=1)
            hit = (candidates[b, j] >= 0) & p_valid[:, r]
            matched[b[hit], j[hit]] = True
            tp += hit
        total += tp / (n + m - tp)
    out[both] = total / len(thresholds)
    return out


def rsna_map_stream(images: Iterable[Image], thresholds: Sequence[float] = THRESHOLDS) -> tuple[float | None, int]:
    """Mean challenge score over the images that count, from a stream scored :data:`CHUNK_IMAGES` at a time.

    Returns ``(mAP or None when no image counts, number of images counted)``.
    """
    total, counted = 0.0, 0
    chunk: list[Image] = []

    def flush() -> None:
        nonlocal total, counted
        values = chunk_precisions(chunk, thresholds)
        values = values[np.isfinite(values)]
        total += float(values.sum())
        counted += int(values.size)
        chunk.clear()

    for image in images:
        chunk.append(image)
        if len(chunk) >= CHUNK_IMAGES:
            flush()
    if chunk:
        flush()
    return (total / counted if counted else None), counted


def rsna_map_arrays(
    windows: Iterable[tuple[np.ndarray, dict[str, np.ndarray]]], thresholds: Sequence[float] = THRESHOLDS
) -> dict[str, tuple[float | None, int]]:
    """:func:`rsna_map_stream` per variant over windows of flat rows ``(truth, {variant: pred})`` (see
    :func:`array_precisions`), each window holding whole images. Returns ``{variant: (mAP or None, counted)}``."""
    sums: dict[str, list[float]] = {}
    for truth, preds in windows:
        for variant, pred in preds.items():
            values = array_precisions(truth, pred, thresholds)
            values = values[np.isfinite(values)]
            acc = sums.setdefault(variant, [0.0, 0])
            acc[0] += float(values.sum())
            acc[1] += int(values.size)
    return {v: ((t / n if n else None), int(n)) for v, (t, n) in sums.items()}


def challenge_windows(
    windows: Iterable[tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]], variants: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """``challenge.rsna_challenge``'s numbers per variant, from windows ``(labelled image ids, truth, {variant:
    pred})`` (:func:`pixelperfect.db.windows.labelled_windows`), one window held at a time: only labelled images
    count, negatives (labelled, no box) included, an image with neither truth nor prediction skipped."""
    keys = ("labelled", "negatives", "negatives_predicted", "images", "positives")
    acc = {v: dict.fromkeys(keys, 0) | {"total": 0.0, "total_positives": 0.0} for v in variants}
    for labelled, truth, preds in windows:
        with_truth = np.intersect1d(truth[:, 0], labelled)
        for v in variants:
            pred, a = preds[v], acc[v]
            images = np.union1d(truth[:, 0], pred[:, 0])
            values = array_precisions(truth, pred)
            keep = np.isin(images, labelled) & np.isfinite(values)
            positive = keep & np.isin(images, with_truth)
            predicted_negatives = np.setdiff1d(np.intersect1d(pred[:, 0], labelled), with_truth)
            a["labelled"] += len(labelled)
            a["negatives"] += len(labelled) - len(with_truth)
            a["negatives_predicted"] += len(predicted_negatives)
            a["images"] += int(keep.sum())
            a["positives"] += int(positive.sum())
            a["total"] += float(values[keep].sum())
            a["total_positives"] += float(values[positive].sum())
    out = {}
    for v, a in acc.items():
        n, n_pos = int(a["images"]), int(a["positives"])
        out[v] = {
            "score": a["total"] / n if n else None,
            "images": n,
            "labelled": int(a["labelled"]),
            "negatives": int(a["negatives"]),
            "negatives_predicted": int(a["negatives_predicted"]),
            "skipped": int(a["labelled"]) - n,
            "score_positives": a["total_positives"] / n_pos if n_pos else None,
            "positives": n_pos,
        }
    return out


#: Instance-score thresholds of the concept runs' sweep (:func:`threshold_sweep`): 0.05, 0.10, ..., 0.95.
SWEEP_THRESHOLDS: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(1, 20))
#: A predicted box is a true positive at IoU >= this with a still unmatched ground-truth box (PASCAL VOC's 0.5).
SWEEP_IOU = 0.5


def true_positives(truth: np.ndarray, pred: np.ndarray, iou: float = SWEEP_IOU) -> np.ndarray:
    """Per image with a truth or a prediction (id order, as :func:`array_precisions`), the true positives at one
    IoU threshold: predictions by descending score, each matched to the unmatched truth box it overlaps most."""
    images = np.union1d(truth[:, 0], pred[:, 0])
    t, t_valid = _grouped(truth[:, 0], truth[:, 1:5], images)
    p, p_valid = _grouped(pred[:, 0], pred[:, 1:6], images)
    if p.shape[1] == 0 or t.shape[1] == 0:
        return np.zeros(len(images), np.int64)
    conf = np.where(p_valid, -p[:, :, 4], np.inf)
    order = np.argsort(conf, axis=1, kind="stable")
    boxes = np.take_along_axis(p[:, :, :4], order[:, :, None], axis=1)
    p_valid = np.take_along_axis(p_valid, order, axis=1)
    ious = _iou(boxes, t[:, :, :4])
    b = np.arange(len(images))
    matched = ~t_valid
    tp = np.zeros(len(images), np.int64)
    for r in range(boxes.shape[1]):
        candidates = np.where(~matched & (ious[:, r, :] >= iou), ious[:, r, :], -1.0)
        j = np.argmax(candidates, axis=1)
        hit = (candidates[b, j] >= 0) & p_valid[:, r]
        matched[b[hit], j[hit]] = True
        tp += hit
    return tp


def threshold_sweep(
    windows: Iterable[tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]],
    variants: Sequence[str],
    thresholds: Sequence[float] = SWEEP_THRESHOLDS,
    iou: float = SWEEP_IOU,
) -> dict[str, dict[str, Any]]:
    """Precision and recall of the predicted boxes against the ground-truth boxes over the labelled images, for
    predictions of instance score >= each threshold (one pass over :func:`pixelperfect.db.windows.labelled_windows`),
    and the threshold they choose: the best F1, the lowest threshold on a tie. Also per threshold the image-level
    presence — the fraction of labelled negatives with any prediction (``presence_negatives``, want 0) and of
    labelled positives with one (``presence_positives``, want 1) — and the challenge score at the chosen threshold.

    Returns per variant ``{"sweep": [{threshold, precision, recall, f1, tp, predicted, truth, presence_...}],
    "score_threshold", "precision", "recall", "f1", "rsna_score_at_threshold", "presence_negatives",
    "presence_positives"}`` (``None`` for a variant with no labelled truth box)."""
    acc = {v: np.zeros((len(thresholds), 5), np.float64) for v in variants}  # tp, predicted, +found, -found, -
    truth_n = {v: 0 for v in variants}
    counts = {"positives": 0, "negatives": 0}
    rsna = {v: [[0.0, 0] for _ in thresholds] for v in variants}
    for labelled, truth, preds in windows:
        truth = truth[np.isin(truth[:, 0], labelled)]
        positives = np.unique(truth[:, 0])
        negatives = np.setdiff1d(labelled, positives)
        counts["positives"] += len(positives)
        counts["negatives"] += len(negatives)
        for v in variants:
            pred = preds[v][np.isin(preds[v][:, 0], labelled)]
            truth_n[v] += len(truth)
            for i, t in enumerate(thresholds):
                kept = pred[pred[:, 5] >= t]
                acc[v][i, 0] += int(true_positives(truth, kept, iou).sum())
                acc[v][i, 1] += len(kept)
                found = np.unique(kept[:, 0])
                acc[v][i, 2] += int(np.isin(positives, found).sum())
                acc[v][i, 3] += int(np.isin(negatives, found).sum())
                values = array_precisions(truth, kept)
                values = values[np.isfinite(values)]
                rsna[v][i][0] += float(values.sum())
                rsna[v][i][1] += int(values.size)
    out: dict[str, dict[str, Any]] = {}
    for v in variants:
        rows = []
        for i, t in enumerate(thresholds):
            tp, predicted, pos_found, neg_found = (float(x) for x in acc[v][i, :4])
            precision = tp / predicted if predicted else None
            recall = tp / truth_n[v] if truth_n[v] else None
            f1 = 2 * tp / (predicted + truth_n[v]) if predicted + truth_n[v] else None
            total, n = rsna[v][i]
            rows.append({
                "threshold": t, "precision": precision, "recall": recall, "f1": f1, "tp": int(tp),
                "predicted": int(predicted), "truth": truth_n[v],
                "presence_positives": pos_found / counts["positives"] if counts["positives"] else None,
                "presence_negatives": neg_found / counts["negatives"] if counts["negatives"] else None,
                "rsna_score": total / n if n else None,
            })  # fmt: skip
        scored = [r for r in rows if r["f1"] is not None]
        best = (
            max(scored, key=lambda r: (float(r["f1"] or 0.0), -float(r["threshold"] or 0.0)))
            if truth_n[v] and scored
            else None
        )
        out[v] = {
            "sweep": rows,
            "score_threshold": best["threshold"] if best else None,
            "precision": best["precision"] if best else None,
            "recall": best["recall"] if best else None,
            "f1": best["f1"] if best else None,
            "rsna_score_at_threshold": best["rsna_score"] if best else None,
            "presence_negatives": best["presence_negatives"] if best else None,
            "presence_positives": best["presence_positives"] if best else None,
        }
    return out
