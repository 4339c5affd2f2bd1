"""bench/gpu_bench.py (P6) runs only where a GPU is lent, rarely: its ``--smoke`` mode runs the same code on the CPU
(sam_tiny, 8 images, fp32 and bf16, one and two end-to-end processes) so that the GPU run does not fail on plumbing,
and every module its processes load is in the lent machine's image or carried (issue 33)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.speed.test_gpu_carry import check_modules

ROOT = Path(__file__).resolve().parents[2]
#: Loaded first by every Python process of the run (PYTHONPATH): records the modules it loaded when it exits.
SITECUSTOMIZE = """
import atexit, json, os, sys
atexit.register(lambda: open(os.path.join({folder!r}, f"modules-{{os.getpid()}}.json"), "w").write(
    json.dumps(sorted(sys.modules))))
"""


@pytest.mark.slow
def test_gpu_benchmark_plumbing_runs_on_cpu(tmp_path: Path) -> None:
    (tmp_path / "sitecustomize.py").write_text(SITECUSTOMIZE.format(folder=str(tmp_path)))
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu_bench.py"), "--smoke"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PYTHONPATH": f"{tmp_path}:{ROOT}", "PATH": "/usr/bin:/bin", "HOME": str(Path.home())},
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
    # the parent and its three end-to-end children: what they loaded, run time imports included
    loaded = [json.loads(p.read_text()) for p in tmp_path.glob("modules-*.json")]
    assert len(loaded) == 4, [p.name for p in tmp_path.iterdir()]
    check_modules(sorted(set().union(*loaded)))
