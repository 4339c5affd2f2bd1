"""The producer, the CLI and the report do not load libtorch (~700 MiB of RSS): only workers and training do."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    "module",
    [
        "pixelperfect.producer.enqueue",
        "pixelperfect.cli",
        "pixelperfect.evaluation.build",
        "pixelperfect.monitor",
        "pixelperfect.api",  # the notebook API (reading results: tests/api/test_api.py)
    ],
)
def test_module_does_not_import_torch(module: str) -> None:
    code = (
        f"import json, sys, {module}; "
        "rss = [int(line.split()[1]) for line in open('/proc/self/status') if line.startswith('VmRSS:')][0]; "
        "print(json.dumps({'torch': 'torch' in sys.modules, 'rss': rss / 1024}))"
    )
    out = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert not out["torch"], f"{module} imports torch"
    assert out["rss"] < 400, f"{module}: {out['rss']:.0f} MiB after import"  # with torch: ~790 MiB


def test_segmenters_still_load_sam_on_demand() -> None:
    code = (
        "import sys; from pixelperfect.pipeline.model.builder import build_segmenter; "
        "assert 'torch' not in sys.modules; "
        "seg = build_segmenter('sam_tiny', None, 'cpu'); print(type(seg).__module__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "pixelperfect.pipeline.model.sam"
