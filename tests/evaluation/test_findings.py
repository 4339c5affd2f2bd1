"""The report's Findings on paired samples whose answer is known: a real rise, a real fall, no change, a change too
small to matter however small its p, Holm's correction, and wording without ground truth."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pixelperfect.evaluation.findings import LIMITS, MIN_EFFECT, finding_lines, findings, holm
from pixelperfect.evaluation.stats import paired_comparison


def _comparison(kind: str, metric: str, a: np.ndarray, b: np.ndarray, *, variant: str = "clahe") -> dict:
    return {
        "kind": kind,
        "metric": metric,
        "a": {"run": "r", "variant": "raw"},
        "b": {"run": "r", "variant": variant},
        **paired_comparison(a, b, lower_is_better=metric == "consistency_std", n_resamples=500),
    }


def _dice(n: int, shift: float, noise: float = 0.05, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.uniform(0.5, 0.9, n)
    return a, a + shift + rng.normal(0, noise, n)


@pytest.mark.parametrize(("shift", "verdict", "word"), [(0.1, "increase", "higher"), (-0.1, "decrease", "lower")])
def test_a_real_change_is_stated_with_its_direction_interval_and_p(shift: float, verdict: str, word: str) -> None:
    [f] = findings([_comparison("variant", "dice", *_dice(200, shift))])
    assert f["verdict"] == verdict
    assert f["ci_low"] is not None and f["ci_high"] is not None
    assert f["ci_low"] <= shift <= f["ci_high"]  # the interval covers the planted shift (noise sd 0.05, n 200)
    assert f["p_holm"] is not None and f["p_holm"] < 1e-6
    assert f"is {word}" in f["sentence"] and "95 % CI" in f["sentence"] and "n = 200" in f["sentence"]
    assert "better" not in f["sentence"] and "worse" not in f["sentence"]


def test_no_change_is_not_called_a_change() -> None:
    [f] = findings([_comparison("variant", "dice", *_dice(200, 0.0))])
    assert f["verdict"] == "no meaningful change"
    assert "no meaningful change in Dice" in f["sentence"]


def test_a_tiny_change_is_no_meaningful_change_however_small_p() -> None:
    a, b = _dice(20_000, 0.005, noise=0.01)  # half the minimum effect, with p ~ 0
    [f] = findings([_comparison("variant", "dice", a, b)])
    assert f["wilcoxon_p"] is not None and f["wilcoxon_p"] < 1e-10
    assert abs(f["mean_diff"] - 0.005) < 0.001 < MIN_EFFECT["dice"]
    assert f["verdict"] == "no meaningful change"


def test_a_large_but_noisy_change_is_unclear() -> None:
    a, b = _dice(8, 0.05, noise=0.3, seed=3)  # mean change above the minimum, interval spans zero
    [f] = findings([_comparison("variant", "dice", a, b)])
    assert abs(f["mean_diff"]) >= MIN_EFFECT["dice"]
    assert f["ci_low"] < 0 < f["ci_high"]
    assert f["verdict"] == "unclear" and "no clear change" in f["sentence"]


def test_holm_adjusts_step_down_and_keeps_order() -> None:
    assert holm([0.01, 0.04, None, 0.03]) == pytest.approx([0.03, 0.06, None, 0.06])
    assert holm([0.5, 0.5]) == [1.0, 1.0]
    assert holm([]) == []


def test_holm_across_the_block_can_undo_a_single_significant_p() -> None:
    """p = 0.03 alone is below 0.05; among 3 comparisons its Holm-adjusted p is not."""
    rng = np.random.default_rng(7)
    comps = []
    for v in ("a", "b", "c"):
        a = rng.uniform(0.5, 0.9, 12)
        comps.append(_comparison("variant", "dice", a, a + rng.normal(0.0, 0.05, 12), variant=v))
    comps[0].update(wilcoxon_p=0.03, mean_diff=0.05, ci_low=0.01, ci_high=0.09)
    comps[1].update(wilcoxon_p=0.5)
    comps[2].update(wilcoxon_p=0.9)
    out = findings(comps)
    assert out[0]["p_holm"] == pytest.approx(0.09)
    assert out[0]["verdict"] == "unclear"


def test_without_ground_truth_the_score_and_consistency_are_named_as_such() -> None:
    rng = np.random.default_rng(1)
    s = rng.uniform(0.6, 0.9, 100)
    c = rng.uniform(0.0, 0.1, 100)
    comps = [
        _comparison("variant", "score", s, s + 0.1 + rng.normal(0, 0.01, 100)),
        _comparison("variant", "consistency_std", c, c + rng.normal(0, 0.001, 100)),
        _comparison("variant", "consistency_iou", s, s),  # not a headline measure without Dice
    ]
    out = findings(comps)
    assert [f["metric"] for f in out] == ["score", "consistency_std"]
    assert "predicted IoU score (not an accuracy)" in out[0]["sentence"] and out[0]["verdict"] == "increase"
    assert out[1]["verdict"] == "no meaningful change"
    assert all("better" not in f["sentence"] for f in out)


def test_dice_is_the_headline_when_there_is_ground_truth() -> None:
    a, b = _dice(50, 0.1)
    comps = [_comparison("variant", m, a, b) for m in ("score", "consistency_std", "dice")]
    assert [f["metric"] for f in findings(comps)] == ["dice"]


def test_a_model_that_does_not_beat_its_box_is_told_so() -> None:
    box, mask = _dice(100, -0.2)
    comp = _comparison("prompt", "dice", box, mask)
    comp["a"], comp["b"] = {"run": "r", "variant": "raw", "mask": "prompt box"}, {"run": "r", "variant": "raw",
                                                                                  "mask": "sam_tiny"}  # fmt: skip
    [f] = findings([comp])
    assert "does not beat its prompt box" in f["sentence"]
    box, mask = _dice(100, 0.2)
    comp.update(paired_comparison(box, mask, n_resamples=500))
    assert "beats the box" in findings([comp])[0]["sentence"]


def test_the_lines_end_with_what_they_cannot_say() -> None:
    lines = finding_lines(findings([_comparison("variant", "dice", *_dice(30, 0.1))]))
    assert lines[-1] == LIMITS and len(lines) == 2
    assert finding_lines([])[0].startswith("Nothing to compare")


def test_a_checkpoints_training_record_links_its_base_run(tmp_path: Path) -> None:
    """``config.json`` beside a fine-tuned checkpoint names its base's sha256 (or ``random-<model>``): that run is
    the tuned run's "before", whichever order the report names them in."""
    from pixelperfect.evaluation.collect import RunInfo, training_base, training_links

    tuned_dir = tmp_path / "tuned"
    tuned_dir.mkdir()
    (tuned_dir / "best.pth").write_bytes(b"weights")
    (tuned_dir / "config.json").write_text(json.dumps({"model": {"base_checkpoint_sha256": "ab" * 32}}))
    random_dir = tmp_path / "from-random"
    random_dir.mkdir()
    (random_dir / "config.json").write_text(json.dumps({"model": {"base_checkpoint_sha256": "random-sam_tiny"}}))

    def info(name: str, model: str, checkpoint: str | None, sha: str | None) -> RunInfo:
        return RunInfo(0, name, model, ["raw"], "boxes", "file:///x", {}, checkpoint, sha)

    other = info("other", "sam_vit_b", "file:///w/other.pth", "cd" * 32)
    base = info("base", "sam_vit_b", "file:///w/base.pth", "ab" * 32)
    tuned = info("tuned", "sam_vit_b", f"file://{tuned_dir}/best.pth", "ef" * 32)
    tiny = info("tiny", "sam_tiny", "random", None)
    tiny_tuned = info("tiny-tuned", "sam_tiny", f"file://{random_dir}/best.pth", "01" * 32)
    assert training_base(tuned.checkpoint) == "ab" * 32 and training_base(other.checkpoint) is None
    links = training_links([other, tuned, base, tiny, tiny_tuned])
    assert [(a.name, b.name) for a, b in links] == [("base", "tuned"), ("tiny", "tiny-tuned")]
