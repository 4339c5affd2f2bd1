"""``pixelperfect.compare``'s table: the report's paired comparisons of two (run, variant) sides as a DataFrame,
the same numbers and columns as the report's ``comparisons.csv`` (computed by
:func:`pixelperfect.evaluation.collect.compare_pair`, the report's own code)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pixelperfect.config import Settings

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

#: The table's columns, as ``comparisons.csv`` has them (``mask_a``/``mask_b`` are for prompt comparisons only).
COLUMNS = ("kind", "metric", "n", "sample_n", "mean_a", "mean_b", "mean_diff", "fraction_improved", "wilcoxon_p",
           "ci_low", "ci_high", "lower_is_better", "bootstrap_n",
           "run_a", "variant_a", "run_b", "variant_b")  # fmt: skip


def compare_frame(a: tuple[str, str], b: tuple[str, str], metric: str | None, settings: Settings) -> pd.DataFrame:
    """One row per compared measure of ``b`` against ``a`` (or only ``metric``); ``LookupError`` naming close
    matches for an unknown run or variant, ``ValueError`` for an unknown metric or sides sharing no prompt."""
    import pandas as pd

    from pixelperfect.db.session import session_scope
    from pixelperfect.evaluation.collect import COMPARE_METRICS, compare_pair
    from pixelperfect.evaluation.collect import run_info as report_run
    from pixelperfect.producer.lifecycle import unknown, unknown_run

    if metric is not None and metric not in COMPARE_METRICS:
        raise ValueError(f"metric {metric!r} is not compared; choose from {', '.join(COMPARE_METRICS)}")
    with session_scope(settings.database_url) as session:
        for run, variant in (a, b):
            try:
                info = report_run(session, run)
            except LookupError:
                from pixelperfect.db import repo

                raise unknown_run(run, [r.name for r in repo.list_runs(session)]) from None
            if variant not in info.variants:
                raise unknown("variant", variant, info.variants)
        comparisons, notes = compare_pair(session, a, b)
    rows = [
        {
            **{k: v for k, v in c.items() if k not in ("a", "b")},
            "run_a": c["a"]["run"],
            "variant_a": c["a"]["variant"],
            "run_b": c["b"]["run"],
            "variant_b": c["b"]["variant"],
        }
        for c in comparisons
        if metric is None or c["metric"] == metric
    ]
    if not rows and notes:
        raise ValueError(" ".join(notes))
    return pd.DataFrame(rows, columns=list(COLUMNS))
