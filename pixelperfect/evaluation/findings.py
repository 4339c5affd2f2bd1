"""The report's opening "Findings": did preprocessing (or fine-tuning) change the model's result here, and by how
much — sentences computed from the paired comparisons the report already made (:mod:`.stats`), never new numbers.

For each comparison block (every variant of a run against its baseline ``raw``, every further run against the
first on a shared variant: the runs the user names before/after fine-tuning, in that order, and a run whose
checkpoint's training record names another run's checkpoint as its base, against that run) one headline measure
is stated: the change in Dice where there is ground truth, else the change in the model's own predicted IoU
score and in its consistency under box jitter — worded as exactly that, never as "better", because neither is an
accuracy. Each sentence gives the mean paired difference, its 95 % bootstrap interval, the Wilcoxon p after Holm's
correction across every comparison of the block, and the number of paired prompts. Below :data:`MIN_EFFECT` the
sentence says "no meaningful change" however small p is: on a million prompts a difference of 0.001 Dice is
"significant" and means nothing.

The prompt comparisons (the model's mask against its own prompt box, on the same segments) add one sentence per
run and variant, and say plainly when the model does not beat its box.

What the findings cannot say is stated with them (:data:`LIMITS`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypedDict

#: Smallest mean paired change that counts as a change, per measure (in the measure's own unit): below it the
#: finding is "no meaningful change" whatever the p-value. Dice and scores: 0.02 (two points on a 0–1 scale, about
#: the spread of repeated annotations of one lung field); the jitter's standard deviation of the score: 0.01.
MIN_EFFECT: dict[str, float] = {"dice": 0.02, "score": 0.02, "consistency_iou": 0.02, "consistency_std": 0.01}
#: Family-wise error rate of the Holm-corrected tests.
ALPHA = 0.05
#: How each measure is named in a sentence.
WORDING: dict[str, str] = {
    "dice": "Dice against the ground truth",
    "score": "the model's own predicted IoU score (not an accuracy)",
    "consistency_std": "the spread of the score under box jitter (consistency std; not an accuracy)",
    "consistency_iou": "the agreement of the masks under box jitter (consistency IoU; not an accuracy)",
}
#: What the findings cannot say, printed with them.
LIMITS = (
    "These are paired differences on the images of these runs only: they do not say how another archive, scanner "
    "or population would behave, and the intervals cover sampling of these prompts, not that. Without ground "
    "truth the score and consistency describe the model's confidence and stability, not whether a mask is right."
)


class Finding(TypedDict):
    """One stated finding: which comparison, the numbers, the verdict and the sentence."""

    kind: str  # variant | run | prompt
    metric: str
    a: dict[str, str]
    b: dict[str, str]
    n: int
    mean_diff: float | None
    ci_low: float | None
    ci_high: float | None
    wilcoxon_p: float | None
    p_holm: float | None
    min_effect: float
    verdict: str  # increase | decrease | no meaningful change | unclear
    sentence: str


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values (``None`` stays ``None`` and does not count among the tests): sort the
    m p-values ascending, multiply the i-th (from 0) by ``m - i``, keep them non-decreasing, cap at 1."""
    known = [(p, i) for i, p in enumerate(pvalues) if p is not None]
    out: list[float | None] = [None] * len(pvalues)
    m = len(known)
    running = 0.0
    for rank, (p, i) in enumerate(sorted(known)):
        running = max(running, min(1.0, (m - rank) * float(p)))
        out[i] = running
    return out


def _headline(comparisons: Sequence[Mapping[str, Any]]) -> list[str]:
    """The measures stated for one pair: Dice where there is any, else the score and the consistency std."""
    metrics = {c["metric"] for c in comparisons}
    if "dice" in metrics:
        return ["dice"]
    return [m for m in ("score", "consistency_std") if m in metrics]


def _side(side: Mapping[str, str]) -> str:
    return f"{side['run']} / {side['variant']}" + (f" ({side['mask']})" if side.get("mask") else "")


def _verdict(c: Mapping[str, Any], p_holm: float | None, min_effect: float) -> str:
    diff, lo, hi = c.get("mean_diff"), c.get("ci_low"), c.get("ci_high")
    if diff is None:
        return "unclear"
    if abs(diff) < min_effect:
        return "no meaningful change"
    if p_holm is not None and p_holm < ALPHA and lo is not None and hi is not None and (lo > 0 or hi < 0):
        return "increase" if diff > 0 else "decrease"
    return "unclear"


def _number(value: float | None) -> str:
    return "–" if value is None else f"{value:+.3f}"


def _p(value: float | None) -> str:
    if value is None:
        return "p undefined"
    return "p < 0.001" if value < 0.001 else f"p = {value:.3f}"


def _sentence(c: Mapping[str, Any], verdict: str, p_holm: float | None, min_effect: float) -> str:
    metric = c["metric"]
    what = WORDING.get(metric, metric)
    stats = (
        f"mean change {_number(c.get('mean_diff'))} "
        f"(95 % CI {_number(c.get('ci_low'))} to {_number(c.get('ci_high'))}, "
        f"Holm-adjusted Wilcoxon {_p(p_holm)}, n = {c['n']} paired prompts)"
    )
    if c["kind"] == "prompt":
        subject = (
            f"{c['b']['run']} / {c['b']['variant']}: the {c['b'].get('mask', 'model')} mask against its prompt box"
        )
        if verdict == "increase":
            return f"{subject}: the mask beats the box's own Dice; {stats}."
        if verdict == "unclear" and (c.get("mean_diff") or 0) > 0:
            return f"{subject}: the model does not clearly beat its prompt box; {stats}."
        return f"{subject}: the model does not beat its prompt box (the filled box scores as well or better); {stats}."
    subject = f"{_side(c['b'])} against {_side(c['a'])}"
    if verdict == "no meaningful change":
        return f"{subject}: no meaningful change in {what} (below {min_effect:g}); {stats}."
    if verdict == "unclear":
        return f"{subject}: no clear change in {what}: the interval or the test does not rule out none; {stats}."
    direction = "higher" if verdict == "increase" else "lower"
    return f"{subject}: {what} is {direction}; {stats}."


def findings(comparisons: Sequence[Mapping[str, Any]]) -> list[Finding]:
    """The findings of a report's comparisons (``report.json``'s ``comparisons``: kind, metric, sides and the
    :func:`.stats.paired_comparison` numbers), in their order: per pair of sides the headline measure(s), Holm's
    correction across all of them (prompt comparisons included), then one sentence each."""
    pairs: dict[tuple[str, str, str], list[Mapping[str, Any]]] = {}
    for c in comparisons:
        pairs.setdefault((c["kind"], _side(c["a"]), _side(c["b"])), []).append(c)
    chosen: list[Mapping[str, Any]] = []
    for group in pairs.values():
        keep = ["dice"] if group[0]["kind"] == "prompt" else _headline(group)
        chosen += [c for c in group if c["metric"] in keep and c.get("n")]
    adjusted = holm([c.get("wilcoxon_p") for c in chosen])
    out: list[Finding] = []
    for c, p in zip(chosen, adjusted, strict=True):
        effect = MIN_EFFECT.get(c["metric"], 0.02)
        verdict = _verdict(c, p, effect)
        out.append(
            {
                "kind": c["kind"],
                "metric": c["metric"],
                "a": dict(c["a"]),
                "b": dict(c["b"]),
                "n": int(c["n"]),
                "mean_diff": c.get("mean_diff"),
                "ci_low": c.get("ci_low"),
                "ci_high": c.get("ci_high"),
                "wilcoxon_p": c.get("wilcoxon_p"),
                "p_holm": p,
                "min_effect": effect,
                "verdict": verdict,
                "sentence": _sentence(c, verdict, p, effect),
            }
        )
    return out


def finding_lines(items: Sequence[Mapping[str, Any]]) -> list[str]:
    """The sentences of :func:`findings`, then :data:`LIMITS` (or one line saying there is nothing to compare)."""
    if not items:
        return ["Nothing to compare: one run with one variant and no prompt boxes scored against ground truth."]
    return [str(f["sentence"]) for f in items] + [LIMITS]
