"""docs/quickstart.ipynb executed on a real Jupyter kernel (nbclient + ipykernel), asserting on its outputs: the
segments DataFrame's shape and columns, the figure's artists (one overlay per mask, the legend's scores), and the
comparison equal to ``report.json``'s."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from pixelperfect.config import Settings
from pixelperfect.evaluation.build import build_report

NOTEBOOK = Path(__file__).resolve().parents[2] / "docs" / "quickstart.ipynb"


def _stdout(cell: Any) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.get("output_type") == "stream")


def _cells(nb: Any) -> dict[str, Any]:
    return {tag: cell for cell in nb.cells for tag in cell.get("metadata", {}).get("tags", [])}


@pytest.fixture(scope="module")
def executed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    import nbformat
    from nbclient import NotebookClient

    work = tmp_path_factory.mktemp("quickstart")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    env_before = os.environ.get("PIXELPERFECT_QUICKSTART_DIR")
    os.environ["PIXELPERFECT_QUICKSTART_DIR"] = str(work)  # the kernel inherits the environment
    try:
        started = time.perf_counter()
        NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(work)}}).execute()
        seconds = time.perf_counter() - started
    finally:
        if env_before is None:
            os.environ.pop("PIXELPERFECT_QUICKSTART_DIR", None)
        else:
            os.environ["PIXELPERFECT_QUICKSTART_DIR"] = env_before
    print(f"quickstart.ipynb executed in {seconds:.1f}s")
    return {"nb": nb, "cells": _cells(nb), "work": work, "seconds": seconds}


def test_every_cell_ran_without_error(executed: dict[str, Any]) -> None:
    for cell in executed["nb"].cells:
        if cell.cell_type == "code":
            assert not [o for o in cell.outputs if o.get("output_type") == "error"], cell.source
    run_out = executed["cells"]["run"].outputs
    html = "".join(o.get("data", {}).get("text/html", "") for o in run_out)
    assert "quickstart" in html and "6 done" in html  # Run._repr_html_: configuration and status


def test_the_segments_frame(executed: dict[str, Any]) -> None:
    from pixelperfect.db.frames import DEFAULT_COLUMNS

    info = json.loads(_stdout(executed["cells"]["segments"]).strip().splitlines()[-1])
    assert info["columns"] == ["run", *DEFAULT_COLUMNS]
    rows, cols = info["shape"]
    assert cols == len(DEFAULT_COLUMNS) + 1 and rows >= 2 * 6  # two variants × at least one prompt per phantom
    assert info["dtypes"]["variant"] == "category" and info["dtypes"]["dice"] == "float32"


def test_the_figure_has_one_overlay_per_mask_and_scores_in_its_legend(executed: dict[str, Any]) -> None:
    cell = executed["cells"]["show"]
    info = json.loads(_stdout(cell).strip().splitlines()[-1])
    assert info["masks"] >= 1 and info["overlays"] == info["masks"]
    assert sum("score" in t for t in info["legend"]) == info["masks"] and "ground truth" in info["legend"]
    images = [o for o in cell.outputs if "image/png" in o.get("data", {})]
    assert 1 <= len(images) <= 5  # the worst five prompts' images, one figure each


def test_the_comparison_equals_report_json(executed: dict[str, Any], tmp_path: Path) -> None:
    work = executed["work"]
    shown = json.loads(_stdout(executed["cells"]["compare"]).strip().splitlines()[-1])
    settings = Settings(database_url=f"sqlite:///{work / 'pp.db'}", store_url=f"file://{work / 'store'}")
    report = json.loads(build_report(["quickstart"], tmp_path, settings=settings, fmt="json").read_text())
    expected = [c for c in report["comparisons"] if c["kind"] == "variant"]
    assert [r["metric"] for r in shown] == [c["metric"] for c in expected] and expected
    for row, exp in zip(shown, expected, strict=True):
        for field in ("n", "mean_a", "mean_b", "mean_diff", "ci_low", "ci_high", "wilcoxon_p"):
            # the same computation in two processes; JSON keeps 15+ significant digits
            assert row[field] == pytest.approx(exp[field], rel=1e-9, nan_ok=True), field
    sentences = _stdout(executed["cells"]["findings"])
    assert all(f["sentence"] in sentences for f in report["findings"]) and report["findings"]
    assert "cannot" not in sentences or "do not say" in sentences
