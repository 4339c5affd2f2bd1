"""Box, point and auto prompt runs give the segment rows and masks of the golden file (tests/pipeline/golden.py
records it and holds the tolerances): on any CPU, and not when a prompt or a preprocessing parameter changes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.pipeline.golden import (
    CHOSEN_MARGIN,
    GOLDEN,
    auto_count_reason,
    collect_rows,
    compare_rows,
    mask_digest,
    without_inputs,
    write_checkpoint,
)

pytestmark = pytest.mark.integration
MUTATED_IMAGES = 2  # the mutation runs: phantom-00000 (two boxes) and phantom-00001 (one), box prompts only


@pytest.fixture(scope="module")
def golden() -> dict[str, Any]:
    return json.loads(GOLDEN.read_text())  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def golden_checkpoint(tmp_path_factory: pytest.TempPathFactory, golden: dict[str, Any]) -> Path:
    path = tmp_path_factory.mktemp("golden") / "sam_tiny.pth"
    weights = write_checkpoint(path)
    assert weights == golden["checkpoint"]["weights_sha256"], (
        "seeded_tiny_sam gave other weights than the golden file was recorded with (a changed builder or numpy "
        "random stream): re-record with python -m tests.pipeline.golden"
    )
    return path


def _compare(got: list[dict[str, Any]], want: list[dict[str, Any]], golden: dict[str, Any]) -> Any:
    return compare_rows(
        got,
        want,
        auto_margins=golden["auto_margins"],
        jitter_min_area=golden["jitter_min_area"],
        min_area=golden["min_area"],
    )


def test_rows_match_the_golden_file(
    tmp_path: Path, phantom_dir: Path, golden_checkpoint: Path, golden: dict[str, Any]
) -> None:
    got = json.loads(json.dumps(collect_rows(tmp_path, phantom_dir, golden_checkpoint)))
    result = _compare(got, golden["rows"], golden)
    assert not result.diffs, "\n".join(result.diffs[:20])
    print("\n".join(["not compared:", *result.skipped]) if result.skipped else "every field compared")


def test_the_golden_file_is_worth_comparing(golden: dict[str, Any]) -> None:
    """Masks are stored, partial (not empty, not the whole image), stable and their choices far from a tie: so
    the comparison above compares every field of every row, with margins a CPU's rounding cannot cross."""
    from tests.pipeline.golden import decode_mask

    rows = golden["rows"]
    assert {r["prompt_kind"] for r in rows} == {"box", "point", "auto"}
    assert {r["surface_unit"] for r in rows} == {"px", "mm"}
    for r in rows:
        where = f"{r['run']}/{r['image']}/{r['variant']}/{r['prompt_index']}"
        mask = decode_mask(r["mask_rle"])
        assert int(mask.sum()) == r["area"], where
        assert 0.02 < mask.mean() < 0.7, f"{where}: a mask of {mask.mean():.0%} of the image compares little"
        assert r["stability"] > 0.8, f"{where}: logits near the threshold ({r['stability']})"
        best, runner_up = sorted(r["scores"], reverse=True)[:2]
        assert best - runner_up > CHOSEN_MARGIN, where
        assert r["mask_boxes"], where
    assert len({mask_digest(decode_mask(r["mask_rle"])) for r in rows}) == len(rows), "two rows share a mask"
    assert all(auto_count_reason(m) is None for m in golden["auto_margins"].values()), golden["auto_margins"]
    assert set(golden["jitter_min_area"]) == {f"{r['run']}/{r['image']}/{r['variant']}/{r['prompt_index']}"
                                              for r in rows}  # fmt: skip


def _mutation_rows(golden: dict[str, Any]) -> list[dict[str, Any]]:
    images = {f"phantom-{i:05d}.png" for i in range(MUTATED_IMAGES)}
    return [without_inputs(r) for r in golden["rows"] if r["run"] == "box" and r["image"] in images]


def _rows_with_diffs(diffs: list[str]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for line in diffs:
        where = line.split(":", 1)[0]
        row, _, name = where.rpartition(".")
        out.setdefault(row, set()).add(name)
    return out


def test_a_box_moved_by_one_pixel_fails_the_comparison(
    tmp_path: Path, phantom_dir: Path, golden_checkpoint: Path, golden: dict[str, Any]
) -> None:
    lines = (phantom_dir / "labels.csv").read_text().splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("phantom-00000,"))
    key, x, rest = lines[first].split(",", 2)
    lines[first] = f"{key},{int(x) + 1},{rest}"  # the first box of phantom-00000, one pixel to the right
    labels = tmp_path / "labels.csv"
    labels.write_text("\n".join(lines) + "\n")
    (tmp_path / "run").mkdir()
    got = collect_rows(tmp_path / "run", phantom_dir, golden_checkpoint, runs=("box",), n_images=MUTATED_IMAGES,
                       labels=labels)  # fmt: skip
    result = _compare([without_inputs(r) for r in json.loads(json.dumps(got))], _mutation_rows(golden), golden)
    changed = _rows_with_diffs(result.diffs)
    # the moved box's rows fail on both variants, on its model outputs; the other boxes' rows still match
    assert set(changed) == {"box/phantom-00000.png/clahe/0", "box/phantom-00000.png/raw/0"}, result.diffs
    assert all({"score", "scores"} <= fields for fields in changed.values()), changed


def test_a_changed_preprocessing_parameter_fails_the_comparison(
    tmp_path: Path, phantom_dir: Path, golden_checkpoint: Path, golden: dict[str, Any]
) -> None:
    # the variant keeps its name: CLAHE's clip limit 5.0 -> 4.5 (the other parameters as the built-in's)
    variants = ("raw", "clahe=clahe(clip=4.5,tile=8,brightness=30)")
    got = collect_rows(tmp_path, phantom_dir, golden_checkpoint, runs=("box",), n_images=MUTATED_IMAGES,
                       box_variants=variants)  # fmt: skip
    result = _compare([without_inputs(r) for r in json.loads(json.dumps(got))], _mutation_rows(golden), golden)
    changed = _rows_with_diffs(result.diffs)
    assert set(changed) == {"box/phantom-00000.png/clahe/0", "box/phantom-00000.png/clahe/1",
                            "box/phantom-00001.png/clahe/0"}, result.diffs  # fmt: skip
    assert all({"score", "scores"} <= fields for fields in changed.values()), changed
