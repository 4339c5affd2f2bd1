"""``make bench-quick``'s judgement (bench/run.py, issue 24) on lines it is given: parsing, goals, the baseline's
margins in both directions, and which lines gate under --quick. No benchmark runs here."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"
_spec = importlib.util.spec_from_file_location("bench_run", BENCH / "run.py")
assert _spec is not None and _spec.loader is not None
run = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(run)

ROWS = "P5 rows of images read per key at 200,000 ÷ at 20,000 keys (PostgreSQL statistics)"
P1 = "P1 end-to-end/model-only time per image (sam_tiny 1024², raw, 2 boxes)"


def _baseline() -> dict[str, dict[str, object]]:
    return json.loads((BENCH / "baseline.json").read_text())["lines"]


def test_lines_parse() -> None:
    ratio = run.parse_line(f"{ROWS} ratio=1.000 goal<=1.5 ok=yes")
    assert ratio == {"id": "P5", "what": ROWS[3:], "value": 1.0, "unit": "", "goal": "<=1.5", "ok": True,
                     "line": f"{ROWS} ratio=1.000 goal<=1.5 ok=yes"}  # fmt: skip
    value = run.parse_line("P5 producer keys/s (1,000 keys) value=6943 keys/s goal>=5000 ok=no")
    assert value is not None and (value["value"], value["unit"], value["ok"]) == (6943.0, "keys/s", False)
    bare = run.parse_line("P5 S3 listing keys/s (moto) value=1083 keys/s")
    assert bare is not None and (bare["goal"], bare["ok"]) == ("", None)
    assert run.parse_line("#   detail") is None


def test_the_reverted_stamp_fails_and_the_fix_passes() -> None:
    baseline = _baseline()
    assert run._fails(run.parse_line(f"{ROWS} ratio=8.313 goal<=1.5 ok=no"), baseline)  # type: ignore[arg-type]
    assert run._fails(run.parse_line(f"{ROWS} ratio=1.000 goal<=1.5 ok=yes"), baseline) is None  # type: ignore[arg-type]


def test_margins_follow_the_goal_direction() -> None:
    base = {"P9 x": {"value": 2.0, "margin": 0.25}}
    low = {"id": "P9", "what": "x", "value": 2.4, "goal": "<=9", "ok": True}
    assert run.check_baseline(low, base) is None and run.check_baseline({**low, "value": 2.6}, base)
    high = {"id": "P9", "what": "x", "value": 1.6, "goal": ">=0", "ok": True}
    assert run.check_baseline(high, base) is None and run.check_baseline({**high, "value": 1.4}, base)
    assert run.check_baseline(high, {"P9 x": {"value": 2.0, "margin": None}}) is None  # the goal alone gates


def test_p1_is_judged_by_its_margin_under_load_not_its_goal() -> None:
    baseline = _baseline()
    assert run._fails(run.parse_line(f"{P1} ratio=1.525 goal<=1.05 ok=no"), baseline) is None  # type: ignore[arg-type]
    assert run._fails(run.parse_line(f"{P1} ratio=2.100 goal<=1.05 ok=no"), baseline)  # type: ignore[arg-type]


def test_quick_gates_only_the_baseline_lines() -> None:
    baseline = _baseline()
    cpu = run.parse_line("P1 non-model CPU time per 1024² PNG image value=45.3 ms goal<=40 ok=no")
    assert cpu is not None and not run._gated(cpu, baseline, quick=True) and run._gated(cpu, baseline, quick=False)
    every = {run._key(e) for e in [run.parse_line(f"{ROWS} ratio=1 goal<=1.5 ok=yes")] if e}
    assert every <= set(baseline)
    for entry in baseline.values():
        assert entry["why"] and (entry["margin"] is None or 0 < float(entry["margin"]) <= 1)  # type: ignore[arg-type]
