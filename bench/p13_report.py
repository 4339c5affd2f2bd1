"""P13: ``pixelperfect report`` at archive scale — wall time and peak RSS of the CLI for synthesized runs.

Runs of 10,000, 100,000 and 1,000,000 images (four segments each: two variants × two box prompts, with ground
truth boxes and masks' Dice) are synthesized in PostgreSQL from a real small run (the golden fixture's sam_tiny run,
``tests/evaluation/golden``) by ``INSERT … SELECT`` — no model runs. Each run is reported as JSON and as HTML by a
``pixelperfect report`` subprocess; ``os.wait4`` gives that process's own peak RSS. Goals (issue 13): the
million-image report in <= 60 s and <= 1 GiB peak RSS, memory flat in the run's size (1M ÷ 10k peak RSS), the HTML
under 10 MB. The synthesized images do not exist as files, so the gallery's tiles say "unavailable" (the HTML
still carries every figure).

Run: ``python bench/p13_report.py [--sizes 10000,100000,1000000]``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from pathlib import Path

from common import PIXELPERFECT, ROOT, Measure, env_for, load_average, postgres_db

TIME_GOAL_S = 60.0
RSS_GOAL_MIB = 1024.0
FLAT_GOAL = 1.5  # peak RSS of the largest run ÷ the smallest
HTML_GOAL_MB = 10.0


def measure_cli(args: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Run ``pixelperfect ARGS``; ``(wall seconds, peak RSS MiB of that process, its stderr tail)``."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([PIXELPERFECT, *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    err = proc.stderr.read()  # drained before the wait, so a chatty child cannot block
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"pixelperfect {' '.join(args)} exited {proc.returncode}: {err.decode()[-2000:]}")
    return seconds, usage.ru_maxrss / 1024.0, err.decode()[-300:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000", help="images per synthesized run")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    from tests.evaluation.golden.load import load_golden
    from tests.evaluation.golden.synth import clone_run

    with postgres_db() as url, tempfile.TemporaryDirectory(prefix="p13-") as tmp:
        load_golden(url)
        env = env_for(database_url=url, store_url=f"file://{tmp}/store")
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        results: dict[int, dict[str, tuple[float, float]]] = {}
        html_mb: dict[int, float] = {}
        for n in sizes:
            t0 = time.perf_counter()
            clone_run(url, source="g-sam", name=f"synth-{n}", images=n)
            synth_s = time.perf_counter() - t0
            results[n] = {}
            for fmt in ("json", "html"):
                out = Path(tmp) / f"{n}-{fmt}"
                results[n][fmt] = measure_cli(["report", f"synth-{n}", "--out", str(out), "--format", fmt], env)[:2]
            html_mb[n] = (Path(tmp) / f"{n}-html" / "report.html").stat().st_size / 1e6
            print(f"# {n:,} images ({4 * n * 49 // 50:,} segments) synthesized in {synth_s:.0f} s; "
                  + "; ".join(f"{f}: {s:.1f} s, {r:.0f} MiB" for f, (s, r) in results[n].items())
                  + f"; HTML {html_mb[n]:.2f} MB", flush=True)  # fmt: skip
        big, small = max(sizes), min(sizes)
        detail = [f"load average {load_average():.2f}; PostgreSQL, 4 segments per image, 1 image in 50 failed"]
        for fmt in ("json", "html"):
            seconds, rss = results[big][fmt]
            Measure("P13", f"report {big:,} images {fmt} time", seconds, "s", f"<={TIME_GOAL_S:g}", detail).print()
            Measure("P13", f"report {big:,} images {fmt} peak RSS", rss, "MiB", f"<={RSS_GOAL_MIB:g}").print()
        flat = max(results[big][f][1] / results[small][f][1] for f in ("json", "html"))
        Measure("P13", f"report peak RSS {big:,} ÷ {small:,} images", flat, "", f"<={FLAT_GOAL:g}").print()
        Measure("P13", f"report HTML size at {big:,} images", html_mb[big], "MB", f"<={HTML_GOAL_MB:g}").print()


if __name__ == "__main__":
    main()
