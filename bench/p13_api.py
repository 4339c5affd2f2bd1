"""P13 (notebook API): ``Run.segments()`` of the million-image synthesized run — wall time and peak RSS of a fresh
Python process that does ``import pixelperfect as pp; pp.run(NAME).segments(columns=[...four...])``.

The run is synthesized in PostgreSQL from the golden fixture's real sam_tiny run as for ``p13_report.py``
(1,000,000 images × two variants × two box prompts, 1 image in 50 failed: about 3.9 M segments), no model.
Goals (issue 29): <= 30 s and <= 1 GiB peak RSS for four columns on this 2-core machine.

Run: ``python bench/p13_api.py [--images 1000000] [--compare OTHER_CHECKOUT] [--repeats N]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from common import ROOT, Measure, env_for, load_average, postgres_db

TIME_GOAL_S = 30.0
RSS_GOAL_MIB = 1024.0
COLUMNS = ["key", "variant", "score", "dice"]

CHILD = """
import json, sys, time
t0 = time.perf_counter()
import pixelperfect as pp
df = pp.run(sys.argv[1]).segments(columns={columns!r})
seconds = time.perf_counter() - t0
print(json.dumps({{"seconds": seconds, "rows": len(df), "bytes": int(df.memory_usage(deep=False).sum()),
                  "torch": "torch" in sys.modules}}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1_000_000)
    parser.add_argument(
        "--compare",
        default=None,
        help="another checkout's root: its Run.segments() measured too, "
        "alternating with this one's on the same synthesized run (before / after a change)",
    )
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    from tests.evaluation.golden.load import load_golden
    from tests.evaluation.golden.synth import clone_run

    with postgres_db() as url, tempfile.TemporaryDirectory(prefix="p13api-") as tmp:
        load_golden(url)
        t0 = time.perf_counter()
        clone_run(url, source="g-sam", name="synth", images=args.images)
        print(f"# {args.images:,} images synthesized in {time.perf_counter() - t0:.0f} s", flush=True)
        trees = [("", str(ROOT))] + ([(f" [{args.compare}]", args.compare)] if args.compare else [])
        for _ in range(args.repeats):
            for label, tree in trees[::-1]:  # the other tree first: this one's line comes last
                result, rss, wall = _child(url, tmp, tree)
                detail = [f"load average {load_average():.2f}; {result['rows']:,} rows; frame "
                          f"{result['bytes'] / 2**20:.0f} MiB; torch loaded: {result['torch']}; process wall "
                          f"{wall:.1f} s"]  # fmt: skip
                Measure("P13", f"Run.segments() {args.images:,} images, 4 columns, time{label}", result["seconds"],
                        "s", f"<={TIME_GOAL_S:g}", detail).print()  # fmt: skip
                Measure("P13", f"Run.segments() {args.images:,} images, 4 columns, peak RSS{label}", rss, "MiB",
                        f"<={RSS_GOAL_MIB:g}").print()  # fmt: skip


def _child(url: str, tmp: str, tree: str) -> tuple[dict, float, float]:
    """One fresh process of checkout ``tree`` reading the run: its printed result, peak RSS (MiB), wall time."""
    env = env_for(database_url=url, store_url=f"file://{tmp}/store")
    env["PYTHONPATH"] = os.pathsep.join([tree, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    code = CHILD.format(columns=COLUMNS)
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code, "synth"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    out, err = proc.stdout.read(), proc.stderr.read()  # the child prints one line; stderr stays small
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(err.decode()[-2000:])
    return json.loads(out.decode().strip().splitlines()[-1]), usage.ru_maxrss / 1024.0, wall


if __name__ == "__main__":
    main()
