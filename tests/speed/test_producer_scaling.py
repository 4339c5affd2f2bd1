"""The producer's cost per key does not grow with the run (issue 24): a run of 20,000 keys and one of 200,000, one
after the other, on the real PostgreSQL and Redis (bench/p5_producer.py's own submit, in a subprocess, autovacuum
off on images as in ``make bench-quick``).

The assertion that decides is a count, not a time: rows of ``images`` the database read per key (its statistics'
``idx_tup_read`` + ``seq_tup_read``), at 200,000 ÷ at 20,000 keys. The producer's statements look each key up a
bounded number of times: 2.00 rows per key at both sizes with the stamp after each group, none since the stamp is
part of the insert (the unique-index check of ``ON CONFLICT`` counts as no read there). Issue 24's publish stamp,
which read every row of the run for each group of keys, gave 8.0 (37.7 vs 4.7 rows per key, bench/RESULTS.md). It is
the same on any CPU and under any load. keys/s at 200,000 ÷ at 20,000 is asserted only loosely: on the shared 2-core
VM it read 1.1-1.5 with and without the fix (load 13-20), too noisy at this size to tell the two apart. Row writes
of ``images`` per key (``n_tup_ins + n_tup_upd``) must stay at one: the publish stamp is part of the insert (a stamp
after each published group wrote every row twice, 65 % of 3b4789a's rate on a quiet machine)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

BENCH = Path(__file__).resolve().parents[2] / "bench"
ROWS_PER_KEY_GROWTH = 1.5  # 1.000 measured; the reverted stamp 8.0
RATE_FLOOR = 0.4  # 1.1-1.5 measured at load 13-20; only a collapse of the rate trips it


@pytest.mark.timeout(600)
def test_producer_keys_per_second_do_not_fall_as_the_run_grows(pg_server: str) -> None:
    sys.path.insert(0, str(BENCH))
    try:
        import p5_producer
    finally:
        sys.path.remove(str(BENCH))
    small = p5_producer.submit_rate(20_000, autovacuum=False)  # as bench/run.py --quick: no autovacuum to rely on
    big = p5_producer.submit_rate(200_000, autovacuum=False)
    per_key_big, per_key_small = big["rows_read"] / 200_000, small["rows_read"] / 20_000
    growth = per_key_big / max(per_key_small, 1e-9)  # none at either size since the stamp is part of the insert
    assert growth <= ROWS_PER_KEY_GROWTH, f"rows of images read per key: {per_key_big:.2f} vs {per_key_small:.2f}"
    ratio = big["rate"] / small["rate"]
    assert ratio >= RATE_FLOOR, f"{big['rate']:.0f} keys/s at 200,000 keys, {small['rate']:.0f} at 20,000: {ratio:.3f}"
    # one write of each row: the publish stamp is part of the insert (a stamp after each group wrote every row twice)
    assert big["rows_written"] / 200_000 <= 1.1, f"{big['rows_written'] / 200_000:.2f} row writes of images per key"
    # memory does not grow with the run either: one chunk of keys at a time
    assert big["peak_mib"] - big["before_mib"] < 200, big
