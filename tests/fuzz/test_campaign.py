"""A short coverage-guided pass per harness with atheris: a fixed number of executions from a fixed seed (the
long campaigns are ``make fuzz``). Any finding fails, with the input's path under fuzz/findings/."""

from __future__ import annotations

import pytest

from tests.fuzz.campaign import run_harness
from tests.fuzz.harnesses import HARNESSES

RUNS = 400


@pytest.mark.parametrize("name", list(HARNESSES))
def test_a_short_fuzz_pass_finds_nothing(name: str) -> None:
    summary = run_harness(name, seconds=None, runs=RUNS, seed=1)
    assert summary["findings"] == [], summary
    assert summary["executions"] >= RUNS // 2, summary  # libFuzzer counts the seeds' runs in too
    assert summary["coverage"] > 0, summary
