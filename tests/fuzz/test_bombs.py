"""Decompression bombs and absurd headers end in their reason, each decoded in a forked child limited to 200 MB of
address space over the interpreter's and 20 s (tests/fuzz/bombs.py): a bomb that got past the checks fails its own
test here, it cannot take the test host down. How long each takes to be refused is bench P30, not a timed test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fuzz.bombs import BOMBS, MEMORY_LIMIT_MB

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def outcomes() -> dict[str, dict]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OPENBLAS_NUM_THREADS": "1", "RUST_BACKTRACE": "0"}
    proc = subprocess.run([sys.executable, "-m", "tests.fuzz.bombs"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return {line["name"]: line for line in lines}


@pytest.mark.parametrize("name", list(BOMBS))
def test_a_bomb_is_refused_with_its_reason_within_200_mb(name: str, outcomes: dict[str, dict]) -> None:
    outcome = outcomes[name]
    assert outcome["reason"] == BOMBS[name].reason, f"{name} ({outcome['declared']}, {outcome['size']} bytes)"


def test_the_bombs_are_what_they_claim() -> None:
    """The deflate bomb is small on disk and really inflates past the limit; the nesting and element bombs hold
    what they say (so a refusal above is the check's, not a broken file's)."""
    import zlib

    from pixelperfect.pipeline.decode.limits import DEFAULT_LIMITS, _meta_syntax
    from tests.fuzz.bombs import deflate_bomb, many_elements, nested_sequences

    bomb = deflate_bomb(64)
    assert len(bomb) < 200_000
    _, start = _meta_syntax(bomb)
    assert len(zlib.decompress(bomb[start:], -zlib.MAX_WBITS)) > 64 << 20
    assert nested_sequences(50).count(b"\xfe\xff\x00\xe0") == 50
    assert many_elements(1000).count(b"\x09\x00\x01\x10SH") == 1000
    assert MEMORY_LIMIT_MB == 200 and DEFAULT_LIMITS.max_inflated_bytes < 512 << 20
