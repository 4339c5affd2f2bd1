"""The time of each hot statement at a million images (issue 24), for two versions of the code side by side.

The run of tests/db/plans.py at ``--images`` (default 1,000,000) on the real PostgreSQL, autovacuum off; each hot
statement of tests/db/test_hot_plans.py is called through the real function, in a transaction rolled back, best
of ``--repeats``: first with *stale* statistics (nothing analyzed since the inserts: a run being registered), then
after ``ANALYZE`` (*fresh*). ``--code DIR`` names a second tree whose ``pixelperfect`` package is timed the same way
(e.g. ``git archive main pixelperfect | tar -x -C DIR``): its numbers go in the ``before`` columns.

Not part of ``make bench`` (about 5 minutes, most of it building the rows). Run:
``python bench/hot_statements.py [--images 1000000] [--code /tmp/old]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(url: str, repeats: int) -> None:
    """In a subprocess whose ``sys.path`` starts with the code to time: one JSON line, case name -> ms."""
    from tests.db import plans, test_hot_plans

    run = plans.BigRun(url, "postgresql", "")
    out: dict[str, float] = {}
    for case in test_hot_plans.CASES:
        if case.swap_run:
            continue  # captured on another run: its time there says nothing
        test_hot_plans._all_ids(url)
        best = float("inf")
        for _ in range(repeats):
            from sqlalchemy.orm import Session

            from pixelperfect.db.session import get_engine

            with Session(get_engine(url)) as session:
                t0 = time.perf_counter()
                try:
                    case.call(session, run)
                    session.flush()
                    best = min(best, time.perf_counter() - t0)
                finally:
                    session.rollback()
        out[case.name] = 1000 * best
    print(json.dumps(out))


def _time(url: str, code: str | None, repeats: int) -> dict[str, float]:
    path = [code] if code else []
    prog = (f"import sys; sys.path[:0] = {[*path, str(ROOT), str(ROOT / 'bench')]!r}; "
            f"import hot_statements as h; h.child({url!r}, {repeats})")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True, timeout=3600, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1_000_000)
    parser.add_argument("--code", default="", help="a tree whose pixelperfect package is the 'before'")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
    from common import load_average, postgres_db
    from sqlalchemy import text

    from pixelperfect.db.session import get_engine
    from tests.db import plans

    with postgres_db() as url:
        t0 = time.perf_counter()
        plans.build(url, "postgresql", "stale", n_images=args.images)
        print(f"# built {args.images:,} images in {time.perf_counter() - t0:.0f} s; load average {load_average():.2f}")
        table: dict[str, dict[str, float]] = {}
        for stats in ("stale", "fresh"):
            if stats == "fresh":
                with get_engine(url).begin() as conn:
                    conn.execute(text("ANALYZE"))
            for label, code in (("before", args.code), ("after", "")):
                if label == "before" and not code:
                    continue
                for name, ms in _time(url, code or None, args.repeats).items():
                    table.setdefault(name, {})[f"{stats} {label}"] = ms
        columns = [c for c in ("stale before", "stale after", "fresh before", "fresh after")
                   if any(c in row for row in table.values())]  # fmt: skip
        print(f"| statement ({args.images:,} images) | " + " | ".join(f"{c} ms" for c in columns) + " |")
        print("| --- |" + " --- |" * len(columns))
        for name, row in table.items():
            print(f"| {name} | " + " | ".join(f"{row[c]:.1f}" if c in row else "—" for c in columns) + " |")
        print(f"# load average {load_average():.2f}")


if __name__ == "__main__":
    main()
