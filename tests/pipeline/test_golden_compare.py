"""The golden comparison's tolerances (tests/pipeline/golden.py): each lets through what another instruction set
may change and stops what a real change does."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
from pycocotools import mask as coco_mask

from tests.pipeline.golden import MASK_PX, SCORE_ABS, compare_rows, without_inputs


def _rle(mask: np.ndarray) -> dict[str, Any]:
    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _mask() -> np.ndarray:
    mask = np.zeros((128, 128), bool)
    mask[20:90, 30:100] = True  # 4900 px
    mask[100:120, 10:40] = True  # 600 px: a second component above min_area
    return mask


def _row(mask: np.ndarray | None = None, **changes: Any) -> dict[str, Any]:
    mask = _mask() if mask is None else mask
    row: dict[str, Any] = {
        "run": "box", "image": "a.png", "variant": "raw", "prompt_index": 0, "prompt_kind": "box",
        "prompt": [30.0, 20.0, 100.0, 90.0], "spacing_mm": None, "surface_unit": "px", "mask_key": "m/0.png",
        "score": 0.5, "scores": [0.5, 0.1, -0.2], "chosen": 0, "stability": 0.9,
        "consistency_std": 0.01, "consistency_iou": 0.9, "consistency_iou_base": 0.92,
        "perturbations": [[31.0, 21.0, 101.0, 91.0, 0.49], [29.0, 19.0, 99.0, 89.0, 0.51]],
        "area": int(mask.sum()), "mask_boxes": [[30, 20, 100, 90], [10, 100, 40, 120]],
        "dice": 0.8, "iou": 0.7, "nsd": 0.6, "hd95": 12.0, "box_iou": 0.9, "inside_box": 0.89, "box_dice": 0.75,
        "mask_rle": _rle(mask),
    }  # fmt: skip
    row.update(changes)
    return row


def _diff_fields(got: dict[str, Any], want: dict[str, Any] | None = None) -> set[str]:
    result = compare_rows([got], [want or _row()])
    return {d.split(":", 1)[0].rpartition(".")[2] for d in result.diffs}


def test_equal_rows_compare_equal_and_every_field_has_a_rule() -> None:
    result = compare_rows([_row()], [_row()])
    assert result.diffs == [] and result.skipped == []
    unknown = compare_rows([_row(extra=1)], [_row(extra=1)])
    assert unknown.diffs == ["box/a.png/raw/0: no comparison rule for ['extra']"]


def test_scores_within_the_score_tolerance_pass_and_beyond_fail() -> None:
    near = _row(score=0.5 + 0.5 * SCORE_ABS, scores=[0.5 - 0.9 * SCORE_ABS, 0.1, -0.2])
    assert _diff_fields(near) == set()
    assert _diff_fields(_row(score=0.5 + 2 * SCORE_ABS)) == {"score"}
    assert _diff_fields(_row(scores=[0.5, 0.1, -0.2 + 2 * SCORE_ABS])) == {"scores"}
    assert _diff_fields(_row(perturbations=[[31.0, 21.0, 101.0, 91.0, 0.49 + 2 * SCORE_ABS],
                                            [29.0, 19.0, 99.0, 89.0, 0.51]])) == {"perturbations"}  # fmt: skip
    assert _diff_fields(_row(score=None)) == {"score"}


def test_a_mask_within_the_pixel_budget_passes_and_its_derived_values_follow_it() -> None:
    mask = _mask()
    mask[20, 100 : 100 + 3] = True  # 3 px on the boundary: what another instruction set could flip
    got = _row(
        mask, area=int(mask.sum()), dice=0.8 + 1e-4, hd95=12.5, mask_boxes=[[30, 20, 103, 90], [10, 100, 40, 120]]
    )
    assert _diff_fields(got) == set()
    # the same values with an identical mask fail: equal masks must give equal derived values
    assert _diff_fields(_row(dice=0.8 + 1e-4, hd95=12.5, area=4900 + 600 + 3)) == {"dice", "hd95", "area"}
    # derived values beyond what 3 px can move
    assert _diff_fields(_row(mask, area=int(mask.sum()) + 4, dice=0.8 + 0.01, hd95=13.5)) == {"area", "dice", "hd95"}


def test_a_mask_beyond_the_pixel_budget_or_the_iou_fails() -> None:
    mask = _mask()
    mask[20, 100 : 100 + MASK_PX + 1] = True
    assert "mask" in _diff_fields(_row(mask, area=int(mask.sum())))
    small = np.zeros((128, 128), bool)
    small[10:40, 10:40] = True  # 900 px: 2 differing px already break IoU 0.999
    grown = small.copy()
    grown[40, 10:12] = True
    want = _row(small, area=900, mask_boxes=[[10, 10, 40, 40]])
    assert "mask" in _diff_fields(_row(grown, area=902, mask_boxes=[[10, 10, 40, 41]]), want)


def test_mask_boxes_are_skipped_with_a_reason_where_a_pixel_joins_components() -> None:
    apart = np.zeros((128, 128), bool)
    apart[20:90, 30:100] = True
    apart[91:110, 20:60] = True  # one empty row between the two components
    joined = apart.copy()
    joined[90, 35] = True  # one pixel joins them (8-connected)
    want = _row(apart, area=int(apart.sum()), mask_boxes=[[30, 20, 100, 90], [20, 91, 60, 110]])
    got = _row(joined, area=int(joined.sum()), mask_boxes=[[20, 20, 100, 110]])
    result = compare_rows([got], [want])
    assert result.diffs == []
    assert result.skipped == ["box/a.png/raw/0.mask_boxes: 1 differing px joined or split components (1 vs 2)"]
    # with the components apart in both, the same boxes are compared (and fail)
    assert _diff_fields(_row(apart, area=int(apart.sum()), mask_boxes=[[20, 20, 100, 110]]), want) == {"mask_boxes"}


def test_the_choice_among_candidates_is_compared_only_with_a_margin() -> None:
    assert _diff_fields(_row(chosen=1)) == {"chosen"}
    tied = _row(scores=[0.5, 0.5 - SCORE_ABS, -0.2])
    result = compare_rows([_row(chosen=1, scores=[0.5, 0.5 - SCORE_ABS, -0.2])], [tied])
    assert result.diffs == [] and "leads by" in result.skipped[0]


def test_surface_distances_allow_one_pixel_or_its_millimetres() -> None:
    mask = _mask()
    mask[20, 100] = True
    mm = {"surface_unit": "mm", "spacing_mm": [0.5, 0.7]}
    assert _diff_fields(_row(mask, area=5501, hd95=12.0 + 0.69, **mm), _row(**mm)) == set()
    assert _diff_fields(_row(mask, area=5501, hd95=12.0 + 0.8, **mm), _row(**mm)) == {"hd95"}


def test_without_inputs_leaves_only_what_the_pipeline_computed() -> None:
    row = without_inputs(_row())
    assert "prompt" not in row and "box_dice" not in row
    assert row["perturbations"] == [0.49, 0.51]
    moved = copy.deepcopy(row)
    moved["perturbations"] = [0.49 + 2 * SCORE_ABS, 0.51]
    assert compare_rows([row], [without_inputs(_row())]).diffs == []
    assert _diff_fields(moved, without_inputs(_row())) == {"perturbations"}


def test_rows_missing_or_extra_are_reported() -> None:
    result = compare_rows([_row(), _row(prompt_index=1)], [_row(), _row(prompt_index=2)])
    assert result.diffs == ["box/a.png/raw/1: only in got", "box/a.png/raw/2: missing"]
