"""Box, point and auto prompt runs give the same segment rows and masks as the golden file recorded before the
scoring path was unified (tests/pipeline/golden.py writes it)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.pipeline.golden import GOLDEN, collect_rows, compare

pytestmark = pytest.mark.integration


def test_rows_equal_the_golden_file(tmp_path: Path, phantom_dir: Path, tiny_checkpoint: Path) -> None:
    want = json.loads(GOLDEN.read_text())
    got = json.loads(json.dumps(collect_rows(tmp_path, phantom_dir, tiny_checkpoint)))
    assert {r["prompt_kind"] for r in want} == {"box", "point", "auto"}
    diffs = compare(got, want)
    assert not diffs, "\n".join(diffs[:20])


def test_compare_finds_differences() -> None:
    assert compare([{"a": 1.0, "b": [1, 2]}], [{"a": 1.0 + 1e-9, "b": [1, 2]}]) == []
    assert compare([{"a": 1.1}], [{"a": 1.0}]) == ["rows[0].a: 1.1 != 1.0"]
    assert compare([{"a": None}], [{"a": 0.0}]) and compare([[1]], [[1, 2]]) and compare({"x": 1}, {"y": 1})
