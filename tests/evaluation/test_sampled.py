"""Paired values in bounded memory: below the cap every pair in stream order (the unsampled numbers), above it a
seeded subsample of the cap with n, means and the share improved still exact."""

from __future__ import annotations

import numpy as np
import pytest

from pixelperfect.evaluation.sampled import capped_pairs
from pixelperfect.evaluation.stats import paired_comparison


def _blocks(seed: int = 0, sizes: tuple[int, ...] = (700, 1, 0, 1300, 999)) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for n in sizes:
        block = rng.random((n, 4)).astype(np.float32)
        block[rng.random(n) < 0.1, 2] = np.nan  # the second metric is missing on some rows
        out.append(block)
    return out


def test_below_the_cap_every_pair_in_order() -> None:
    blocks = _blocks()
    full = np.concatenate(blocks)
    [(a0, b0, e0), (a1, b1, e1)] = capped_pairs(iter(blocks), 2, cap=len(full))
    assert e0 is None and e1 is None
    np.testing.assert_array_equal(a0, full[:, 0])
    np.testing.assert_array_equal(b0, full[:, 1])
    ok = np.isfinite(full[:, 2])
    np.testing.assert_array_equal(a1, full[ok, 2])
    np.testing.assert_array_equal(b1, full[ok, 3])
    assert paired_comparison(a0, b0) == paired_comparison(full[:, 0], full[:, 1])


def test_above_the_cap_a_seeded_subsample_with_exact_sums() -> None:
    blocks = _blocks()
    full = np.concatenate(blocks)
    got = capped_pairs(iter(blocks), 2, cap=500)
    again = capped_pairs(iter(_blocks()), 2, cap=500)
    for i, (va, vb, exact) in enumerate(got):
        np.testing.assert_array_equal(va, again[i][0])  # seeded: the same subsample every time
        fa, fb = full[:, 2 * i].astype(np.float64), full[:, 2 * i + 1].astype(np.float64)
        ok = np.isfinite(fa) & np.isfinite(fb)
        fa, fb = fa[ok], fb[ok]
        assert exact is not None and exact["n"] == ok.sum()
        assert len(va) <= 500 and (i == 1 or len(va) == 500)
        every = set(zip(fa.astype(np.float32).tolist(), fb.astype(np.float32).tolist(), strict=True))
        assert set(zip(va.tolist(), vb.tolist(), strict=True)) <= every
        for lower in (False, True):
            out = paired_comparison(va, vb, exact=exact, lower_is_better=lower)
            ref = paired_comparison(fa, fb, lower_is_better=lower)
            assert out["n"] == ref["n"] and out["sample_n"] == len(va) and ref["sample_n"] == ref["n"]
            for k in ("mean_a", "mean_b", "mean_diff", "fraction_improved"):
                assert out[k] == pytest.approx(ref[k], rel=1e-9, abs=1e-12)
    # the subsample is spread over the whole stream, not the first rows
    positions = np.flatnonzero(np.isin(full[:, 0], got[0][0]))
    assert positions.min() < 300 and positions.max() > len(full) - 300


def test_cap_must_be_positive() -> None:
    with pytest.raises(ValueError):
        capped_pairs([], 1, cap=0)
