"""A short coverage-guided pass per harness with atheris: a fixed number of executions from a fixed seed (the
long campaigns are ``make fuzz``). Any finding fails, with the input's path under the test's own findings folder.

Each pass starts from the seeds alone, in a folder of its own: a corpus that ``make fuzz`` grew under ``fuzz/``
(hundreds of inputs) would be read in before the 400 executions end, and the pass would report no coverage.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fuzz import campaign
from tests.fuzz.campaign import run_harness
from tests.fuzz.harnesses import HARNESSES

RUNS = 400


@pytest.mark.parametrize("name", list(HARNESSES))
def test_a_short_fuzz_pass_finds_nothing(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(campaign, "FUZZ_DIR", tmp_path)  # the seeds only; findings under tmp_path/findings
    summary = run_harness(name, seconds=None, runs=RUNS, seed=1)
    assert summary["findings"] == [], summary
    assert summary["executions"] >= RUNS // 2, summary  # libFuzzer counts the seeds' runs in too
    assert summary["coverage"] > 0, summary
