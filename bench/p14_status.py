"""P14: ``pixelperfect status RUN --json`` on a run of a million images — wall time and peak RSS of the CLI.

The run (four segments per image, 1 image in 50 failed) is synthesized in PostgreSQL from the golden fixture's real
sam_tiny run, as for P13. ``status`` is two grouped queries over the run's entries of the images' status/progress
index (migration 0003) and must not import torch or the model code. The command runs three times (the median
counts; the first pays the cold cache); ``os.wait4`` gives each process's own peak RSS. Goals (issue 13): <= 1 s,
<= 150 MB.

Run: ``python bench/p14_status.py [--images 1000000]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import time

from common import PIXELPERFECT, ROOT, Measure, env_for, load_average, postgres_db

TIME_GOAL_S = 1.0
RSS_GOAL_MB = 150.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1_000_000)
    args = parser.parse_args()
    from tests.evaluation.golden.load import load_golden
    from tests.evaluation.golden.synth import clone_run

    with postgres_db() as url:
        load_golden(url)
        t0 = time.perf_counter()
        clone_run(url, source="g-sam", name="synth", images=args.images)
        synth_s = time.perf_counter() - t0
        env = env_for(database_url=url)
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        runs = []
        for _ in range(3):
            t1 = time.perf_counter()
            proc = subprocess.Popen([PIXELPERFECT, "status", "synth", "--json"], env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE)  # fmt: skip
            out, err = proc.communicate()
            seconds = time.perf_counter() - t1
            runs.append(seconds)
            if proc.returncode != 0:
                raise RuntimeError(f"status exited {proc.returncode}: {err.decode()[-2000:]}")
        info = json.loads(out)
        # peak RSS: one more run waited for with wait4 (communicate() reaps the child itself)
        proc = subprocess.Popen([PIXELPERFECT, "status", "synth", "--json"], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)  # fmt: skip
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        rss_mb = usage.ru_maxrss * 1024 / 1e6
        detail = [
            f"{args.images:,} images synthesized in {synth_s:.0f} s; status says {info['images']}, "
            f"{info['segments']:,} segments; runs {', '.join(f'{s:.2f}' for s in runs)} s; "
            f"load average {load_average():.2f}"
        ]
        Measure("P14", f"status of {args.images:,} images time", statistics.median(runs), "s",
                f"<={TIME_GOAL_S:g}", detail).print()  # fmt: skip
        Measure("P14", f"status of {args.images:,} images peak RSS", rss_mb, "MB", f"<={RSS_GOAL_MB:g}").print()


if __name__ == "__main__":
    main()
