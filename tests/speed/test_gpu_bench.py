"""bench/gpu_bench.py (P6) runs only where a GPU is lent, rarely: its ``--smoke`` mode runs the same code on the CPU
(sam_tiny, 8 images, fp32 and bf16, one and two end-to-end processes) so that the GPU run does not fail on plumbing."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gpu_benchmark_plumbing_runs_on_cpu() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu_bench.py"), "--smoke"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(Path.home())},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    values = {m[1]: float(m[2]) for m in re.finditer(r"^P6 (.+?) value=([0-9.]+)", done.stdout, re.M)}
    encoder = [k for k in values if k.startswith("encoder images/s")]
    e2e = [k for k in values if k.startswith("end-to-end images/s")]
    assert {k.split()[-3] for k in encoder} == {"fp32", "bf16"}, done.stdout
    assert len(e2e) == 2 and any("2 process(es)" in k for k in e2e), done.stdout
    assert all(values[k] > 0 for k in encoder + e2e), done.stdout
    assert "8 images from local disk" in done.stdout
    stages = re.findall(r"stage ms/image \(process 1\): (.+)", done.stdout)
    assert len(stages) == 2 and all("encode" in line and "decode" in line for line in stages), done.stdout
