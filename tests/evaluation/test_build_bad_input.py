"""Bad input for the report: an empty run, a run whose every image failed, runs with other variants and other
prompt modes side by side — every format renders, with a sentence where a section has nothing to show."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from pixelperfect.db import repo
from pixelperfect.db.session import session_scope
from pixelperfect.evaluation.build import build_report
from tests.conftest import embedded_settings
from tests.evaluation.golden.load import load_golden

pytestmark = pytest.mark.integration


def _fields(name: str, variants: list[str], prompt_mode: str = "boxes") -> dict[str, object]:
    return {
        "source_url": "file:///nowhere",
        "store_url": "file:///nowhere",
        "model": "sam_tiny",
        "checkpoint": None,
        "checkpoint_sha256": None,
        "variants": [{"name": v, "spec": "identity", "hash": "x"} for v in variants],
        "prompt_mode": prompt_mode,
        "settings": {"annotations": False},
        "code_version": "0",
        "config_hash": name,
    }


@pytest.fixture
def url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'bad.db'}"
    load_golden(url)
    with session_scope(url) as s:
        repo.create_run(s, name="empty", fields=_fields("empty", ["raw", "clahe"]))
        rid = repo.create_run(s, name="odd", fields=_fields("odd", ["sobel"])).id
        repo.add_images(s, run_id=rid, keys=["x.png"])
        image = repo.images_by_key(s, run_id=rid, keys=["x.png"])["x.png"]
        seg = {"run_id": rid, "image_id": image.id, "variant": "sobel", "prompt_index": 0, "prompt_kind": "box",
               "prompt": [0, 0, 8, 8], "score": 0.7, "consistency_std": 0.01, "dice": None}  # fmt: skip
        repo.mark_done(s, image_id=image.id, segments=[seg], fields={})
    return url


def test_empty_failed_and_mismatched_runs_side_by_side(url: str, tmp_path: Path) -> None:
    settings = embedded_settings(tmp_path, database_url=url)
    runs = ["g-sam", "empty", "g-fail", "odd", "g-auto"]
    report = json.loads(build_report(runs, tmp_path / "j", settings=settings, fmt="json").read_text())
    by_run = {r["run"]: r for r in report["runs"]}
    assert list(by_run) == runs
    assert [v["n_segments"] for v in by_run["empty"]["variants"]] == [0, 0]
    assert all(v["score_mean"] is None for v in by_run["g-fail"]["variants"])
    assert [(v["variant"], v["n_segments"]) for v in by_run["odd"]["variants"]] == [("sobel", 1)]
    assert not any(c["b"]["run"] in ("empty", "g-fail", "odd", "g-auto") for c in report["comparisons"]
                   if c["kind"] == "run")  # nothing shared to pair  # fmt: skip

    out = build_report(runs, tmp_path / "c", settings=settings, fmt="csv")
    failures = list(csv.DictReader((out / "failures.csv").open()))
    assert failures == [{"run": "g-fail", "reason": "not_an_image", "n": "3"}]

    page = build_report(runs, tmp_path / "h", settings=settings).read_text()
    for sentence in (
        "odd shares no variant with g-sam",
        "g-sam / raw and empty / raw share no segmented prompt",
        "g-fail: every finished image failed",
        "automatic prompts are not paired",
        "odd has no ground-truth boxes",
    ):
        assert sentence in page, sentence

    alone = json.loads(build_report(["empty"], tmp_path / "e", settings=settings, fmt="json").read_text())
    assert alone["comparisons"] == [] and alone["runs"][0]["variants"][0]["n_segments"] == 0
    assert "Summary" in build_report(["empty"], tmp_path / "eh", settings=settings).read_text()


def test_json_and_csv_reports_import_no_model_plots_or_opencv(url: str, tmp_path: Path) -> None:
    code = (
        "import sys, pathlib\n"
        "from pixelperfect.config import Settings\n"
        "from pixelperfect.evaluation.build import build_report\n"
        f"s = Settings(database_url={url!r})\n"
        f"build_report(['g-sam', 'g-grab'], pathlib.Path({str(tmp_path / 'light')!r}), settings=s, fmt='json')\n"
        f"build_report(['g-sam', 'g-grab'], pathlib.Path({str(tmp_path / 'light')!r}), settings=s, fmt='csv')\n"
        "heavy = ('torch', 'cv2', 'segment_anything', 'matplotlib',"
        " 'pixelperfect.worker')\n"
        "print(sorted(m for m in sys.modules if m.startswith(heavy)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert done.stdout.strip() == "[]", done.stdout[-2000:]
    assert (tmp_path / "light" / "report.json").exists() and (tmp_path / "light" / "summary.csv").exists()
