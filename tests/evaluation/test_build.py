"""The report of two real runs (sam_tiny and GrabCut, raw and CLAHE, made by embedded submit): JSON contract, CSV
tables, and the HTML opened in a real headless Chromium with every image checked."""

from __future__ import annotations

import base64
import csv
import json
import re
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
from markupsafe import escape
from typer.testing import CliRunner

from pixelperfect.config import Settings
from pixelperfect.embedded import SubmitRequest, submit
from pixelperfect.evaluation.build import build_report
from pixelperfect.evaluation.page import SECTIONS
from tests.conftest import embedded_settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

VARIANT_KEYS = {
    "variant",
    "n_segments",
    "score_mean",
    "stability_mean",
    "consistency_std_mean",
    "consistency_iou_mean",
    "dice_mean",
    "iou_mean",
    "box_dice_mean",
    "box_fallbacks",
    "nsd_mean",
    "hd95_mean",
    "surface_unit",
    "surface_by_unit",
}
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Written into the page by the test only: after load, count the images that did not decode.
IMAGE_CHECK = """<script>
window.addEventListener('load', () => {
  const imgs = Array.from(document.images);
  const bad = imgs.filter(i => !i.complete || i.naturalWidth === 0).map(i => i.alt);
  const out = document.createElement('pre');
  out.id = 'img-check';
  out.textContent = JSON.stringify({n: imgs.length, bad: bad});
  document.body.appendChild(out);
});
</script>"""


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory, phantom_dir: Path, tiny_checkpoint: Path) -> Path:
    work = tmp_path_factory.mktemp("report")
    settings = embedded_settings(work)
    for model in ("sam_tiny", "grabcut"):
        submit(
            SubmitRequest(
                source=str(phantom_dir / "images"),
                run=f"r-{model}",
                model=model,
                checkpoint=str(tiny_checkpoint) if model == "sam_tiny" else None,
                variants=["raw", "clahe"],
                annotations=str(phantom_dir / "labels.csv"),
                gt_masks=str(phantom_dir / "masks"),
                batch_size=12,
            ),
            settings,
        )
    return work


def _settings(workdir: Path) -> Settings:
    return embedded_settings(workdir)  # the autouse fixture resets the process settings between tests


def _chromium(*args: str, user_data: Path) -> subprocess.CompletedProcess[str]:
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed (.ci/run installs Debian's chromium)")
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={user_data}",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)


def test_json_and_csv_report(workdir: Path) -> None:
    settings = _settings(workdir)
    path = build_report(["r-sam_tiny", "r-grabcut"], workdir / "out", settings=settings, fmt="json")
    report = json.loads(path.read_text())
    assert set(report) == {"findings", "runs", "comparisons", "detection", "notes"}
    assert report["notes"] == []  # PNG phantoms without --pixel-spacing: every surface metric in px
    assert [(r["run"], r["model"]) for r in report["runs"]] == [("r-sam_tiny", "sam_tiny"), ("r-grabcut", "grabcut")]
    for run in report["runs"]:
        assert set(run) == {"run", "model", "variants"} and [v["variant"] for v in run["variants"]] == ["raw", "clahe"]
        for v in run["variants"]:
            assert set(v) == VARIANT_KEYS and v["n_segments"] > 0 and 0 <= v["dice_mean"] <= 1
    sam_raw, grab_raw = report["runs"][0]["variants"][0], report["runs"][1]["variants"][0]
    assert sam_raw["score_mean"] is not None and sam_raw["consistency_std_mean"] is not None
    assert grab_raw["score_mean"] is None and grab_raw["stability_mean"] is None  # GrabCut has no confidence
    assert sam_raw["box_fallbacks"] is None and 0 <= grab_raw["box_fallbacks"] <= grab_raw["n_segments"]
    # same boxes (SQL sums in index order: equal to the last bits)
    assert 0 < sam_raw["box_dice_mean"] <= 1 and sam_raw["box_dice_mean"] == pytest.approx(grab_raw["box_dice_mean"])
    assert sam_raw["surface_unit"] == "px" and 0 <= sam_raw["nsd_mean"] <= 1 and sam_raw["hd95_mean"] >= 0
    assert sam_raw["surface_by_unit"]["px"]["n"] == sam_raw["n_segments"]
    assert sam_raw["surface_by_unit"]["px"]["nsd_mean"] == sam_raw["nsd_mean"]
    stated = {(f["kind"], f["a"]["run"], f["a"]["variant"], f["b"]["run"], f["b"]["variant"]) for f in
              report["findings"]}  # fmt: skip
    assert ("variant", "r-sam_tiny", "raw", "r-sam_tiny", "clahe") in stated
    assert ("run", "r-sam_tiny", "raw", "r-grabcut", "raw") in stated
    assert {f["metric"] for f in report["findings"]} == {"dice"}  # ground truth: Dice is the headline
    prompt = [c for c in report["comparisons"] if c["kind"] == "prompt"]
    assert {(c["a"]["run"], c["a"]["variant"], c["a"]["mask"], c["b"]["mask"]) for c in prompt} == {
        (run, v, "prompt box", model) for run, model in (("r-sam_tiny", "sam_tiny"), ("r-grabcut", "grabcut"))
        for v in ("raw", "clahe")
    }  # fmt: skip
    sam_prompt = next(c for c in prompt if c["b"]["run"] == "r-sam_tiny" and c["b"]["variant"] == "raw")
    assert sam_prompt["n"] == sam_raw["n_segments"] and sam_prompt["metric"] == "dice"
    assert sam_prompt["mean_a"] == pytest.approx(sam_raw["box_dice_mean"])
    assert sam_prompt["mean_b"] == pytest.approx(sam_raw["dice_mean"])
    kinds = {(c["kind"], c["metric"], c["a"]["run"], c["b"]["run"]) for c in report["comparisons"]}
    assert ("variant", "consistency_std", "r-sam_tiny", "r-sam_tiny") in kinds
    assert ("run", "dice", "r-sam_tiny", "r-grabcut") in kinds
    first = report["comparisons"][0]
    assert first["n"] == sam_raw["n_segments"]  # every SAM prompt pairs with itself under the other variant
    assert first["wilcoxon_p"] is None or 0 <= first["wilcoxon_p"] <= 1

    out = build_report(["r-sam_tiny", "r-grabcut"], workdir / "csv", settings=settings, fmt="csv")
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert [(r["run"], r["variant"]) for r in rows] == [
        ("r-sam_tiny", "raw"),
        ("r-sam_tiny", "clahe"),
        ("r-grabcut", "raw"),
        ("r-grabcut", "clahe"),
    ]
    assert rows[2]["score_mean"] == ""  # null -> empty cell
    assert rows[0]["surface_unit"] == "px" and "surface_by_unit" not in rows[0]  # per unit: surface.csv
    for name in (
        "comparisons",
        "statistics",
        "calibration",
        "reliability",
        "detection",
        "surface",
        "cases",
        "failures",
    ):
        assert (out / f"{name}.csv").exists()
    detection = list(csv.DictReader((out / "detection.csv").open()))
    assert len(detection) == 4 and all(0 <= float(d["box_agreement"]) <= 1 for d in detection)  # box runs: no mAP
    assert {d["measure"] for d in detection} == {"box_agreement"} and not any(d["rsna_score"] for d in detection)


def test_html_report_opens_in_chromium_with_every_image(workdir: Path, tmp_path: Path) -> None:
    settings = _settings(workdir)
    path = build_report(["r-sam_tiny", "r-grabcut"], workdir / "html", settings=settings)
    text = path.read_text()
    assert "<script" not in text and "http://" not in text and "https://" not in text  # self-contained, inert
    srcs = re.findall(r'<img [^>]*src="([^"]+)"', text)
    assert len(srcs) >= 8  # figures + 2 runs x (3 worst + 3 best) gallery tiles
    for src in srcs:
        assert src.startswith("data:image/png;base64,")
        decoded = cv2.imdecode(np.frombuffer(base64.b64decode(src.split(",", 1)[1]), np.uint8), cv2.IMREAD_COLOR)
        assert decoded is not None and decoded.shape[0] > 10 and decoded.shape[1] > 10
    for title in (
        "Consistency before vs after preprocessing",
        "With vs without fine-tuning",
        "Calibration",
        "RSNA challenge metric",
        "Random-forest consistency regressor",
        "Gallery",
        "GrabCut box fallbacks",
        "Model against its prompt box",
    ):
        assert title in text
    # the page opens with the Findings: one sentence per headline comparison, in the JSON's words
    assert text.index('<section id="findings">') < text.index('<section id="summary">')
    findings = json.loads(build_report(["r-sam_tiny", "r-grabcut"], tmp_path / "j", settings=settings,
                                       fmt="json").read_text())["findings"]  # fmt: skip
    assert findings and all(escape(f["sentence"]) in text for f in findings)
    for sid, title, _, _ in SECTIONS:  # each section once, in its <section> and its heading
        assert text.count(f'<section id="{sid}">') == 1, sid
        assert text.count(f"<h2>{escape(title)}</h2>") == 1, title

    probe = tmp_path / "probe.html"
    probe.write_text(text.replace("</body>", IMAGE_CHECK + "</body>"))
    dom = _chromium("--virtual-time-budget=10000", "--dump-dom", probe.as_uri(), user_data=tmp_path / "chrome1").stdout
    found = re.search(r'<pre id="img-check">(.*?)</pre>', dom)
    assert found, dom[-2000:]
    check = json.loads(found.group(1))
    assert check["n"] == len(srcs) and check["bad"] == []

    shot = tmp_path / "report.png"
    _chromium("--window-size=1280,3000", f"--screenshot={shot}", path.as_uri(), user_data=tmp_path / "chrome2")
    image = cv2.imread(str(shot))
    assert image is not None and image.shape[:2] == (3000, 1280) and image.std() > 10


def test_report_cli(workdir: Path) -> None:
    from pixelperfect.cli import app

    _settings(workdir)
    runner = CliRunner()
    result = runner.invoke(app, ["report", "r-grabcut", "--out", str(workdir / "cli"), "--format", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads((workdir / "cli" / "report.json").read_text())["runs"][0]["run"] == "r-grabcut"
    missing = runner.invoke(app, ["report", "no-such-run", "--out", str(workdir / "cli")])
    assert missing.exit_code == 2 and "no-such-run" in missing.output
    bad = runner.invoke(app, ["report", "r-grabcut", "--out", str(workdir / "cli"), "--format", "pdf"])
    assert bad.exit_code == 2 and "--format" in bad.output
