"""Coverage-guided fuzzing of the harnesses of :mod:`tests.fuzz.harnesses` with atheris (libFuzzer for Python).

``python -m tests.fuzz.campaign [--seconds 180] [--runs N] [--seed 1] [HARNESS ...]`` (``make fuzz``): for each
harness, a child process fuzzes it from its seed corpus (built under ``fuzz/corpus/<harness>/``, git-ignored, and
grown by the run) under limits: 2 s of CPU time per input, 30 s of wall time (a watchdog thread of the
child; libFuzzer's own ``-timeout`` is off, its SIGALRM killed the Python child without a trace),
:data:`~tests.fuzz.harnesses.RSS_LIMIT_MB` of memory (``-rss_limit_mb``). A crash, hang or memory blow-up is a
finding: its input is written to ``fuzz/findings/<harness>/`` and the child is started again for the time left (at
most :data:`MAX_RESTARTS` times).
Prints one line per harness (executions, coverage, features, corpus, peak RSS, slowest input, findings) and exits
1 when any harness has a finding.

The child (``--child HARNESS``) instruments pixelperfect's and pydicom's Python code for coverage
(``atheris.instrument_imports``) but for ``pipeline.decode.voi`` (its numba kernel does not compile instrumented;
its branches still run, without coverage feedback); native codecs (libjpeg-turbo, OpenJPEG, CharLS, libpng) run
uninstrumented.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FUZZ_DIR = ROOT / "fuzz"
MAX_RESTARTS = 20
INPUT_TIMEOUT_S = 2
WALL_TIMEOUT_S = 30


def _child(name: str, argv: list[str], slow_file: str) -> None:
    import atheris

    # voi holds a numba kernel, and numba cannot compile atheris-instrumented bytecode: imported uninstrumented
    import pixelperfect.pipeline.decode.voi  # noqa: F401

    with atheris.instrument_imports(include=["pixelperfect", "pydicom", "tests.fuzz"]):
        from tests.fuzz import harnesses

    harnesses.warm_up(name)
    slowest = [0.0]
    main_clock = time.pthread_getcpuclockid(threading.main_thread().ident or 0)
    current: list = [b"", 0.0, 0.0]  # the input being run, when it started (wall, main thread's CPU; 0: none)
    findings = Path(argv[[a.startswith("-artifact_prefix=") for a in argv].index(True)].split("=", 1)[1])

    def watchdog() -> None:
        """libFuzzer's SIGALRM timeout does not survive in every Python child: ours. An input over
        INPUT_TIMEOUT_S of the fuzzing thread's CPU time (wall time misfires on a shared, loaded host), or over
        WALL_TIMEOUT_S of wall time (an input blocked without computing), is written as a timeout finding."""
        import hashlib

        while True:
            time.sleep(0.1)
            data, wall, cpu = current
            if not wall:
                continue
            over_cpu = time.clock_gettime(main_clock) - cpu > INPUT_TIMEOUT_S
            if over_cpu or time.perf_counter() - wall > WALL_TIMEOUT_S:
                path = findings / f"timeout-{hashlib.sha1(data).hexdigest()}"
                path.write_bytes(data)
                print(f"input over its time: Test unit written to {path}", file=sys.stderr, flush=True)
                os._exit(71)

    def one_input(data: bytes) -> None:
        current[:] = [data, time.perf_counter(), time.clock_gettime(main_clock)]
        try:
            harnesses.run_one(name, data)
        except BaseException:  # atheris' own crash path died by SIGALRM before writing the input: ours
            import hashlib
            import traceback

            path = findings / f"crash-{hashlib.sha1(data).hexdigest()}"
            path.write_bytes(data)
            print(traceback.format_exc(), f"Test unit written to {path}", sep="\n", file=sys.stderr, flush=True)
            os._exit(70)
        took = time.clock_gettime(main_clock) - current[2]
        current[1] = 0.0
        if took > slowest[0]:
            slowest[0] = took
            Path(slow_file).write_text(json.dumps({"cpu_seconds": took, "size": len(data)}))

    threading.Thread(target=watchdog, daemon=True).start()
    atheris.Setup([sys.argv[0], *argv], one_input)
    atheris.Fuzz()


def _stat(pattern: str, text: str, default: int = 0) -> int:
    found = re.findall(pattern, text)
    return int(found[-1]) if found else default


def _reproduces(name: str, path: Path, env: dict[str, str]) -> bool:
    """Whether a finding's input fails the harness again in a fresh, uninstrumented process (within the limits)."""
    code = (
        "import sys, time; from tests.fuzz import harnesses; harnesses.warm_up(sys.argv[1]); "
        "t = time.process_time(); harnesses.run_one(sys.argv[1], open(sys.argv[2], 'rb').read()); "
        f"sys.exit(3 if time.process_time() - t > {INPUT_TIMEOUT_S} else 0)"
    )
    try:
        proc = subprocess.run([sys.executable, "-c", code, name, str(path)], cwd=ROOT, env=env, capture_output=True,
                              timeout=WALL_TIMEOUT_S + 60)  # fmt: skip
    except subprocess.TimeoutExpired:
        return True
    return proc.returncode != 0


def run_harness(name: str, *, seconds: float | None, runs: int | None, seed: int, quiet: bool = True) -> dict:
    """Fuzz harness ``name`` for ``seconds`` (or ``runs`` executions); the summary of the campaign."""
    from tests.fuzz import seeds

    corpus = FUZZ_DIR / "corpus" / name
    findings = FUZZ_DIR / "findings" / name
    findings.mkdir(parents=True, exist_ok=True)
    seeds.write(FUZZ_DIR / "corpus", [name])
    slow_file = FUZZ_DIR / f"slowest-{name}.json"
    slow_file.unlink(missing_ok=True)
    from tests.fuzz.harnesses import RSS_LIMIT_MB

    summary = {"harness": name, "executions": 0, "coverage": 0, "features": 0, "corpus": 0, "peak_rss_mb": 0,
               "findings": [], "seconds": 0.0}  # fmt: skip
    started = time.monotonic()
    for restart in range(MAX_RESTARTS + 1):
        left = None if seconds is None else seconds - (time.monotonic() - started)
        if left is not None and left < 1:
            break
        args = ["-timeout=0", f"-rss_limit_mb={RSS_LIMIT_MB}", f"-seed={seed + restart}",
                f"-artifact_prefix={findings}/", "-print_final_stats=1", "-max_len=200000", str(corpus)]  # fmt: skip
        if left is not None:
            args.insert(0, f"-max_total_time={max(1, int(left))}")
        if runs is not None:
            args.insert(0, f"-runs={runs}")
        findings.mkdir(parents=True, exist_ok=True)
        before = set(findings.iterdir())
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
        env["RUST_BACKTRACE"] = "0"  # pylibjpeg-rle's panics (docs/fuzzing.md F8) print no backtrace
        proc = subprocess.run(
            [sys.executable, "-m", "tests.fuzz.campaign", "--child", name, "--slow-file", str(slow_file), "--", *args],
            cwd=ROOT, env=env, capture_output=True, text=True, errors="replace",
        )  # fmt: skip
        log = proc.stderr
        progress = [int(n) for n in re.findall(r"^#(\d+)\t", log, re.MULTILINE)]  # a crashed child prints no stats
        summary["executions"] += max([_stat(r"stat::number_of_executed_units: (\d+)", log), *progress])
        summary["coverage"] = max(summary["coverage"], _stat(r"cov: (\d+)", log))
        summary["features"] = max(summary["features"], _stat(r"ft: (\d+)", log))
        summary["corpus"] = max(summary["corpus"], _stat(r"corp: (\d+)", log))
        rss = max(_stat(r"stat::peak_rss_mb: (\d+)", log), _stat(r"rss: (\d+)Mb", log))
        summary["peak_rss_mb"] = max(summary["peak_rss_mb"], rss)
        written = re.findall(r"Test unit written to (\S+)", log)
        new = sorted(set(findings.iterdir()) - before) or [Path(p) for p in written if Path(p).exists()]
        new = [p for p in new if p.is_file()]
        unreproduced = [p for p in new if not _reproduces(name, p, env)]
        for path in unreproduced:
            new.remove(path)  # e.g. libFuzzer ending the child at -max_total_time mid-input: kept apart, counted
            (findings / "unreproduced").mkdir(exist_ok=True)
            path.rename(findings / "unreproduced" / path.name)
            summary["unreproduced"] = summary.get("unreproduced", 0) + 1
        summary["findings"] += [str(p.relative_to(ROOT)) for p in new]
        if new and not quiet:
            print(log[-3000:], file=sys.stderr)
        if proc.returncode == 0 or (runs is not None and not new):
            break
        if not new and not unreproduced:  # no finding, yet a failure: the harness itself broke
            raise RuntimeError(f"harness {name} exited {proc.returncode}:\n{log[-3000:]}")
        if runs is not None:
            break
    summary["seconds"] = round(time.monotonic() - started, 1)
    summary["slowest_input_s"] = json.loads(slow_file.read_text())["cpu_seconds"] if slow_file.exists() else 0.0
    return summary


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        rest = argv.index("--")
        _child(argv[1], argv[rest + 1 :], argv[argv.index("--slow-file") + 1])
        return 0
    from tests.fuzz.harnesses import HARNESSES

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("harnesses", nargs="*", choices=[[], *HARNESSES], default=[])
    parser.add_argument("--seconds", type=float, default=float(os.environ.get("FUZZ_SECONDS", 180)))
    parser.add_argument("--runs", type=int, default=None, help="executions per harness instead of a time")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    total = 0
    failed = False
    for name in args.harnesses or list(HARNESSES):
        seconds = None if args.runs else args.seconds
        s = run_harness(name, seconds=seconds, runs=args.runs, seed=args.seed, quiet=False)
        total += s["executions"]
        failed |= bool(s["findings"])
        print(f"{name:12s} executions={s['executions']} cov={s['coverage']} ft={s['features']} corpus={s['corpus']} "
              f"peak_rss_mb={s['peak_rss_mb']} slowest_input_s={s['slowest_input_s']:.3f} seconds={s['seconds']} "
              f"findings={len(s['findings'])} unreproduced={s.get('unreproduced', 0)} "
              f"{' '.join(s['findings'])}", flush=True)  # fmt: skip
    print(f"total executions={total} findings={'yes' if failed else 0}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
