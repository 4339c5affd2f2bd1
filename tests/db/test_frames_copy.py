"""``Run.segments()``'s PostgreSQL path (one binary COPY of every variant, parsed by a numpy structured view, issue
29) against the per-variant reference path (``segment_columns``: the report's byte-string blocks) on the same
database: the golden fixture's real sam_tiny run, cloned to a few thousand images so that the COPY spans several
parse blocks. Every column, every NULL (NaN), every range filter equal."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import select, text

from pixelperfect.db import frames
from pixelperfect.db.models import Run
from pixelperfect.db.session import session_scope
from tests.evaluation.golden.load import load_golden
from tests.evaluation.golden.synth import clone_run

pytestmark = pytest.mark.integration

COLUMNS = ["key", "variant", "prompt_kind", *frames.SEGMENT_INTS, *frames.SEGMENT_FLOATS]


@pytest.fixture
def synth_url(pg_url: str) -> str:
    load_golden(pg_url)
    run_id = clone_run(pg_url, source="g-sam", name="copy-synth", images=3000)
    with session_scope(pg_url) as s:  # NULL measures (no ground truth, no spacing): NaN on both paths
        s.execute(text("UPDATE segments SET dice = NULL, nsd = NULL WHERE run_id = :r AND id % 7 = 0"), {"r": run_id})
        s.execute(text("UPDATE segments SET area = NULL WHERE run_id = :r AND id % 11 = 0"), {"r": run_id})
    return pg_url


def _reference(url: str, run_id: int, variants: list[str], where: dict | None) -> tuple[dict, list[int]]:
    parts: dict[str, list[np.ndarray]] = {}
    lengths = []
    with session_scope(url) as s:
        for v in variants:
            cols = frames.segment_columns(s, run_id=run_id, variant=v, columns=COLUMNS, ranges=where)
            lengths.append(len(cols["image_id"]))
            for name, arr in cols.items():
                parts.setdefault(name, []).append(arr)
    return {k: np.concatenate(v) for k, v in parts.items()}, lengths


@pytest.mark.parametrize("where", [None, {"dice": (0.0225, None), "hd95": (None, 165.0)}], ids=["all", "ranges"])
def test_the_copy_path_equals_the_reference_path(synth_url: str, monkeypatch: pytest.MonkeyPatch, where: dict) -> None:
    monkeypatch.setattr(frames, "_COPY_PARSE_BYTES", 64 << 10)  # many parse blocks, rows cut across them
    with session_scope(synth_url) as s:
        run = s.scalar(select(Run).where(Run.name == "copy-synth"))
        assert run is not None
        run_id, variants = run.id, [v["name"] for v in run.variants][::-1]  # an order other than the run's
        got, lengths = frames.variant_columns(s, run_id=run_id, variants=variants, columns=COLUMNS, ranges=where)
    want, want_lengths = _reference(synth_url, run_id, variants, where)
    assert lengths == want_lengths and sum(lengths) > (6000 if where is None else 100)
    assert set(got) == set(want)
    for name in want:
        assert got[name].dtype == want[name].dtype, name
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)  # NaN == NaN here: NULLs kept as NULLs
    assert np.isnan(got["area"]).any()  # NULLs were in it
    if where is None:
        assert np.isnan(got["dice"]).any() and np.isnan(got["nsd"]).any()
