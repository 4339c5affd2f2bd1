"""One plan for a GPU loan (issue 33): the GPU benchmark's parts, the most valuable first, within a time budget.

A lent GPU machine comes rarely, with 15 minutes of device time in all (its start included) and at most 10 minutes
a command. ``bench/gpu.sh`` installs the carried wheels, then runs this: each chosen part (``PP_GPU_PARTS``,
default all) in the order of :data:`PARTS`, as its own process — ``python bench/SCRIPT --budget SECONDS``
(``--smoke`` on a CPU: the same code, meaningless numbers), then its gpu-marked tests. A part that cannot do its
least (``min_s``) in the time left is skipped, saying so, and the next, smaller one is tried; a part that runs past
its share is stopped. Every line a part prints goes at once to stdout, to ``OUT/gpu.txt`` and to
``OUT/<part>.txt`` (``OUT``: ``$OUT`` on the device machine, else ``bench/out``), so a call cut off at its limit
still returns what was measured until then.

Adding a part (SAM 2.1, SAM 3, …): its script ``bench/gpu_<name>.py`` takes ``--budget SECONDS`` (drop optional
measures beyond it) and ``--smoke`` (run on a CPU in a minute or two), prints ``P<n> … value=`` lines
(``common.Measure``), and may correct this file's guesses for it with module-level constants, read without
importing it: ``ESTIMATE_S``, ``MIN_S``, ``SMOKE_S``, ``TESTS`` (a tuple of pytest paths), ``TESTS_S``. Packages
it needs beyond the machine's image go into ``bench/gpu-wheels.txt`` under its name. Until its script is in the
tree, the plan prints "not available in this tree" for it and goes on.
"""

from __future__ import annotations

import argparse
import ast
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO

import gpu_carry

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
#: Seconds kept back from the budget: the summary, the last writes, the command's own exit.
RESERVE_S = 10.0
#: How far past its share a part's script may run before it is stopped (its own budget check is coarse): a quarter
#: of its budget, at most this.
GRACE_S = 20.0


@dataclass(frozen=True)
class Part:
    """One part of the plan. Times are guesses until a loan measured them (each part prints its own total):
    ``estimate_s`` a full run on one H100, tests included; ``min_s`` the least in which it measures something
    (it skips its optional measures itself); ``smoke_s`` its ``--smoke`` run on this 2-core CPU."""

    name: str
    script: str
    what: str
    estimate_s: float
    min_s: float
    smoke_s: float = 120.0
    args: tuple[str, ...] = ()
    tests: tuple[str, ...] = ()  # pytest paths, run with ``-m gpu`` after the script
    tests_s: float = 0.0


#: In order of value: P6, end-to-end images/s on one GPU, is the number this project exists for.
PARTS = (
    Part("p6", "gpu_bench.py", "P6: ViT-B encoder and end-to-end images/s, peak memory, torch.compile, bf16 masks",
         estimate_s=420, min_s=180, smoke_s=240, args=("--compile",), tests=("tests/pipeline/model/test_sam.py",),
         tests_s=60),
    Part("sam2", "gpu_sam2.py", "SAM 2.1 on the GPU", estimate_s=240, min_s=120),
    Part("sam3", "gpu_sam3.py", "SAM 3 on the GPU", estimate_s=240, min_s=120),
    Part("decode", "gpu_decode.py", "P11g: JPEG / JPEG 2000 DICOM decoding with nvImageCodec against the CPU",
         estimate_s=180, min_s=90, smoke_s=90, tests=("tests/pipeline/decode/test_gpu.py",), tests_s=45),
)  # fmt: skip
assert tuple(p.name for p in PARTS) == gpu_carry.PARTS

OVERRIDES = {"ESTIMATE_S": "estimate_s", "MIN_S": "min_s", "SMOKE_S": "smoke_s", "TESTS": "tests", "TESTS_S": "tests_s"}


def with_overrides(part: Part, script: Path) -> Part:
    """``part`` with the module-level constants its script declares (``ESTIMATE_S = 300`` …), read by ``ast``."""
    changes = {}
    for node in ast.parse(script.read_text()).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            field = OVERRIDES.get(node.targets[0].id)
            if field:
                value = ast.literal_eval(node.value)
                changes[field] = tuple(value) if field == "tests" else float(value)
    return replace(part, **changes)


class Sink:
    """Lines to stdout and to files, each written and flushed at once (a cut-off call keeps what was written)."""

    def __init__(self, *files: IO[str]) -> None:
        self.files = (sys.stdout, *files)
        self._lock = threading.Lock()

    def line(self, text: str) -> None:
        text = text.rstrip("\n") + "\n"
        with self._lock:
            for fh in self.files:
                fh.write(text)
                fh.flush()


def run_child(cmd: list[str], limit_s: float, sink: Sink) -> tuple[int | None, float]:
    """Run ``cmd`` in its own process group, its output line by line to ``sink``; stopped (with its children)
    after ``limit_s``. Returns ``(exit code or None when stopped, seconds)``."""
    t0 = time.monotonic()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            bufsize=1, errors="replace", start_new_session=True)  # fmt: skip

    def pump() -> None:
        assert proc.stdout is not None
        for text in proc.stdout:
            sink.line(text)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        proc.wait(timeout=max(limit_s, 1.0))
        code: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        code = None
        for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(proc.pid, sig)
                proc.wait(timeout=wait)
                break
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue
    reader.join(timeout=5.0)
    return code, time.monotonic() - t0


def run_part(part: Part, script: Path, share_s: float, smoke: bool, sink: Sink) -> str:
    """The part's script within ``share_s`` (its tests' time included), then its tests; a one-line outcome."""
    budget = max(share_s - (part.tests_s if part.tests else 0.0), 1.0)
    cmd = [sys.executable, str(script), "--budget", f"{budget:.0f}", *part.args, *(["--smoke"] if smoke else [])]
    sink.line(f"# {part.name}: {' '.join(cmd[1:])} (share {share_s:.0f} s)")
    grace = min(GRACE_S, budget / 4)
    code, seconds = run_child(cmd, budget + grace, sink)
    if code is None:
        return f"stopped at its limit after {seconds:.0f} s (its lines so far are kept)"
    if code != 0:
        return f"failed: exit {code} after {seconds:.0f} s"
    outcome = f"done in {seconds:.0f} s"
    if part.tests:
        left = share_s + grace - seconds
        if left < 10:
            return outcome + f"; its tests not run ({left:.0f} s left of its share)"
        tests = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu", *part.tests]
        code, t_seconds = run_child(tests, left, sink)
        verdict = "stopped" if code is None else ("passed" if code in (0, 5) else f"failed (exit {code})")
        outcome += f"; tests {verdict} in {t_seconds:.0f} s"
        if code not in (0, 5):  # 5: every test deselected or skipped (no CUDA under --smoke)
            return "failed: " + outcome
    return outcome


def run_plan(names: list[str], budget_s: float, started: float, out: Path, *, smoke: bool = False,
             bench_dir: Path = HERE) -> int:  # fmt: skip
    """Run the parts ``names`` (any order; run in order of value) within ``budget_s`` seconds from ``started``
    (epoch seconds); lines to stdout, ``out/gpu.txt`` and ``out/<part>.txt``. Exit code: 0 when every part that
    ran succeeded, 1 otherwise."""
    out.mkdir(parents=True, exist_ok=True)
    chosen = [p for p in PARTS if p.name in names]
    outcomes: list[tuple[str, str]] = []
    failed = False
    with (out / "gpu.txt").open("a") as log:
        sink = Sink(log)
        mode = "smoke test on the CPU (numbers mean nothing)" if smoke else "on the GPU"
        sink.line(f"# plan: {', '.join(p.name for p in chosen)}, {mode}; budget {budget_s:.0f} s, "
                  f"{budget_s - (time.time() - started):.0f} s left")  # fmt: skip
        problems = gpu_carry.preflight(names)
        for problem in problems:
            sink.line(f"# preflight: {problem}")
        failed = failed or (smoke and bool(problems))
        for part in chosen:
            script = bench_dir / part.script
            if not script.is_file():
                outcomes.append((part.name, f"not available in this tree (no bench/{part.script} yet)"))
                sink.line(f"# {part.name}: {outcomes[-1][1]}")
                continue
            part = with_overrides(part, script)
            left = budget_s - (time.time() - started) - RESERVE_S
            need, full = (part.smoke_s, part.smoke_s) if smoke else (part.min_s, part.estimate_s)
            lacking = [] if smoke else gpu_carry.missing([part.name])
            if left < need:
                outcome = f"skipped: needs {need:.0f} s (a full run ~{full:.0f} s), {max(left, 0):.0f} s left"
            elif lacking:
                outcome = f"skipped: {', '.join(lacking)} not installed or carried (bash bench/gpu-wheels.sh)"
            else:
                with (out / f"{part.name}.txt").open("w") as own:
                    outcome = run_part(part, script, min(left, full), smoke, Sink(log, own))
                failed = failed or not outcome.startswith("done")
            outcomes.append((part.name, outcome))
            sink.line(f"# {part.name}: {outcome}")
        sink.line(f"# plan took {time.time() - started:.0f} s of its {budget_s:.0f} s: "
                  + "; ".join(f"{name} {outcome}" for name, outcome in outcomes))  # fmt: skip
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=480.0, help="seconds for every part together")
    parser.add_argument("--started", type=float, default=None, help="epoch seconds the budget counts from")
    parser.add_argument("--parts", default=os.environ.get("PP_GPU_PARTS", ""), help="default: PP_GPU_PARTS, all")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or ROOT / "bench" / "out"))
    parser.add_argument("--smoke", action="store_true", help="each part's --smoke, on a CPU")
    parser.add_argument("--bench-dir", type=Path, default=HERE, help="where the parts' scripts are (tests)")
    args = parser.parse_args(argv)
    try:
        names = gpu_carry.parse_parts(args.parts)
    except ValueError as exc:
        parser.error(str(exc))
    started = time.time() if args.started is None else args.started
    return run_plan(names, args.budget, started, args.out, smoke=args.smoke, bench_dir=args.bench_dir)


if __name__ == "__main__":
    sys.exit(main())
