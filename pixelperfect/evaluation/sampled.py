"""Paired values in bounded memory: exact sums over every pair, and a seeded subsample of at most
:data:`PAIRED_MAX_PAIRS` pairs for what needs the values themselves (Wilcoxon, the bootstrap, box plots, figures).

Blocks of pairs arrive from :mod:`pixelperfect.db.streams` (``paired_blocks``, ``own_pair_blocks``); each row of a
block gets a seeded uniform key and the rows with the ``cap`` smallest keys are kept (a bottom-k sample: uniform
over all rows, whatever the block sizes), so the report holds at most ``cap`` rows plus one block. When there are
at most ``cap`` rows every row is kept, in stream order: the numbers are those of the unsampled arrays.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

#: Above this many pairs a comparison's Wilcoxon p, bootstrap CI, box plot and figure use a seeded subsample of
#: this many rows (``sample_n`` says how many pairs that was); ``n``, the means and the share improved stay exact.
#: 500,000: the kept rows with their keys (~20 MB for four metrics), merged with each block, and scipy's Wilcoxon
#: work arrays stay ~50 MB (at 1,000,000 the million-image report's peak was still 1.51 × the 10,000-image one's).
PAIRED_MAX_PAIRS = 500_000
#: Above this many segments with a Dice, a run × variant's calibration Spearman correlations use a seeded sample of
#: this many (``sample_n`` in its calibration entry; ``n`` and the reliability bins stay exact, from SQL): the
#: predictor columns are float64 × 5 and scipy ranks each pair of them.
CALIBRATION_MAX_ROWS = 500_000


def capped_pairs(
    blocks: Iterable[np.ndarray], n_metrics: int, *, cap: int = PAIRED_MAX_PAIRS, seed: int = 0
) -> list[tuple[np.ndarray, np.ndarray, dict[str, Any] | None]]:
    """Per metric ``(values in a, values in b, exact)`` from blocks of ``(n, 2 × n_metrics)`` float32 rows (a, b per
    metric, NaN where missing), keeping the pairs where both are finite. ``exact`` is ``None`` when every row was
    kept; else the exact ``n``, ``sum_a``, ``sum_b``, ``sum_diff``, ``n_up`` (b > a) and ``n_down`` (b < a) over all
    pairs, for :func:`pixelperfect.evaluation.stats.paired_comparison`."""
    if cap < 1:
        raise ValueError(f"cap must be >= 1, got {cap}")
    rng = np.random.default_rng(seed)
    width = 2 * n_metrics
    sums = np.zeros((n_metrics, 4), np.float64)  # sum a, sum b, sum (b - a) in float64; n in the counts
    counts = np.zeros((n_metrics, 3), np.int64)  # n, up, down
    kept = np.zeros((0, width), np.float32)
    keys = np.zeros(0, np.float64)
    position = np.zeros(0, np.int64)
    seen = 0
    for block in blocks:
        block = np.asarray(block, np.float32).reshape(-1, width)
        for i in range(n_metrics):
            a, b = block[:, 2 * i].astype(np.float64), block[:, 2 * i + 1].astype(np.float64)
            ok = np.isfinite(a) & np.isfinite(b)
            a, b = a[ok], b[ok]
            d = b - a
            sums[i, :3] += (a.sum(), b.sum(), d.sum())
            counts[i] += (a.size, int((d > 0).sum()), int((d < 0).sum()))
        kept = np.concatenate([kept, block])
        keys = np.concatenate([keys, rng.random(len(block))])
        position = np.concatenate([position, np.arange(seen, seen + len(block))])
        seen += len(block)
        if len(kept) > cap:
            top = np.argpartition(keys, cap - 1)[:cap]
            kept, keys, position = kept[top], keys[top], position[top]
    sampled = seen > cap
    if sampled:
        order = np.argsort(position)
        kept = kept[order]
    del keys, position
    out = []
    for i in range(n_metrics):
        va, vb = kept[:, 2 * i], kept[:, 2 * i + 1]
        ok = np.isfinite(va) & np.isfinite(vb)
        exact = None
        if sampled:
            n, up, down = (int(c) for c in counts[i])
            exact = {"n": n, "sum_a": float(sums[i, 0]), "sum_b": float(sums[i, 1]), "sum_diff": float(sums[i, 2]),
                     "n_up": up, "n_down": down}  # fmt: skip
        out.append((va[ok].copy(), vb[ok].copy(), exact))
    return out
