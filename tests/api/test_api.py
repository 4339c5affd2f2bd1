"""The notebook API (``import pixelperfect as pp``) against real embedded runs on SQLite: runs, segments as
DataFrames through the bulk column path, masks, images, figures, comparisons equal to the report's, the HTML
view, bad input, a dry run, and the light import."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import pixelperfect as pp
from pixelperfect.config import Settings
from pixelperfect.evaluation.build import build_report

#: Images of the module's runs: half the phantoms keeps the two model runs short.
IMAGES = 6


@pytest.fixture(scope="module")
def api_db(tmp_path_factory: pytest.TempPathFactory, phantom_dir: Path, tiny_checkpoint: Path) -> dict[str, Any]:
    """Two finished runs over 6 of the 12 phantoms (a manifest), submitted through ``pp.submit`` with explicit URLs:
    ``nb-sam`` (sam_tiny, raw + clahe, boxes, ground truth) and ``nb-grabcut`` (GrabCut, raw)."""
    root = tmp_path_factory.mktemp("api")
    manifest = root / "manifest.txt"
    manifest.write_text("".join(f"{p.name}\n" for p in sorted((phantom_dir / "images").iterdir())[:IMAGES]))
    urls = {"database_url": f"sqlite:///{root / 'pp.db'}", "store_url": f"file://{root / 'store'}"}
    common = {
        "annotations": str(phantom_dir / "labels.csv"),
        "gt_masks": str(phantom_dir / "masks"),
        "variants": ["raw", "clahe"],
        "manifest": str(manifest),
        **urls,
    }
    sam = pp.submit(str(phantom_dir / "images"), "nb-sam", model="sam_tiny", checkpoint=str(tiny_checkpoint), **common)
    grab = pp.submit(str(phantom_dir / "images"), "nb-grabcut", model="grabcut", **{**common, "variants": ["raw"]})
    return {"urls": urls, "root": root, "sam": sam, "grabcut": grab, "phantoms": phantom_dir}


def test_submit_returns_a_finished_run_and_runs_lists_it(api_db: dict[str, Any]) -> None:
    run = api_db["sam"]
    assert isinstance(run, pp.Run) and run.name == "nb-sam" and run.variants == ["raw", "clahe"]
    assert run.status()["images"]["queued"] == 0 and run.status()["images"]["done"] == IMAGES
    table = pp.runs(database_url=api_db["urls"]["database_url"])
    assert list(table["run"]) == ["nb-sam", "nb-grabcut"]
    assert list(table["done"]) == [IMAGES, IMAGES] and list(table["model"]) == ["sam_tiny", "grabcut"]


def test_explicit_arguments_override_the_environment(api_db: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIXELPERFECT_DATABASE_URL", f"sqlite:///{api_db['root'] / 'elsewhere.db'}")
    from pixelperfect.config import use_settings

    use_settings(None)
    assert pp.runs().empty  # the environment's database has no runs
    assert len(pp.runs(database_url=api_db["urls"]["database_url"])) == 2


def test_an_empty_broker_url_runs_embedded_whatever_the_environment_says(monkeypatch: pytest.MonkeyPatch) -> None:
    """``broker_url=""`` forces the embedded path (``None`` means: as the environment says)."""
    from pixelperfect.api.notebook import resolve_settings
    from pixelperfect.config import use_settings

    monkeypatch.setenv("PIXELPERFECT_BROKER_URL", "redis://127.0.0.1:1/0")
    use_settings(None)
    try:
        assert not resolve_settings().embedded
        assert resolve_settings(broker_url="").embedded
    finally:
        use_settings(None)


def test_segments_frame_has_categoricals_float32_and_matches_the_database(api_db: dict[str, Any]) -> None:
    import sqlite3

    run = api_db["sam"]
    df = run.segments()
    assert list(df.columns) == ["run", *pp_default_columns()]
    for col in ("run", "key", "variant", "prompt_kind"):
        assert str(df[col].dtype) == "category", col
    for col in ("score", "dice", "consistency_std"):
        assert df[col].dtype == np.float32, col
    db = sqlite3.connect(api_db["urls"]["database_url"].removeprefix("sqlite:///"))
    count = "SELECT count(*) FROM segments s JOIN runs r ON r.id = s.run_id WHERE r.name = 'nb-sam'"
    (n,) = db.execute(count).fetchone()
    assert len(df) == n > 0
    rows = db.execute(
        "SELECT i.key, s.variant, s.prompt_index, s.dice FROM segments s JOIN images i ON i.id = s.image_id "
        "JOIN runs r ON r.id = s.run_id WHERE r.name = 'nb-sam' AND s.variant = 'clahe' ORDER BY i.id, s.prompt_index"
    ).fetchall()
    clahe = df[df.variant == "clahe"]
    assert list(zip(clahe.key.astype(str), clahe.prompt_index, strict=True)) == [(r[0], r[2]) for r in rows]
    # float32 of the stored float64: equal to float32 rounding (relative 6e-8), nothing else
    np.testing.assert_allclose(clahe.dice.to_numpy(np.float64), [r[3] for r in rows], rtol=1e-6)


def pp_default_columns() -> list[str]:
    from pixelperfect.db.frames import DEFAULT_COLUMNS

    return list(DEFAULT_COLUMNS)


def test_segments_variant_columns_where_and_arrow(api_db: dict[str, Any]) -> None:
    run = api_db["sam"]
    df = run.segments(variant="raw", columns=["key", "dice", "score"], where={"dice": (0.5, None)})
    assert list(df.columns) == ["key", "dice", "score"]
    full = run.segments(variant="raw")
    assert len(df) == int((full.dice >= 0.5).sum())
    assert (df.dice >= 0.5).all()
    table = run.segments(variant="raw", columns=["key", "variant", "dice"], as_arrow=True)
    assert table.num_rows == len(full) and table.column_names == ["key", "variant", "dice"]


def test_images_frame(api_db: dict[str, Any]) -> None:
    df = api_db["grabcut"].images()
    assert len(df) == IMAGES and set(df.status.astype(str)) == {"done"}
    assert list(df.key) == sorted(df.key) and (df.width == 256).all()
    assert api_db["grabcut"].images(status="failed").empty


def test_mask_is_the_stored_png_and_image_is_the_preprocessed_pixels(api_db: dict[str, Any]) -> None:
    import cv2

    from pixelperfect.pipeline.preprocess.variants import parse_variant

    run = api_db["sam"]
    key = str(run.segments(variant="clahe").key.iloc[0])
    mask = run.mask(key, "clahe", 0)
    assert mask.dtype == bool and mask.shape == (256, 256)
    stored = cv2.imread(str(api_db["root"] / "store" / "nb-sam" / "masks" / key / "clahe" / "0.png"), 0)
    assert np.array_equal(mask, stored > 0)
    img = run.image(key, "clahe")
    raw = cv2.imread(str(api_db["phantoms"] / "images" / key), cv2.IMREAD_UNCHANGED)
    assert img.dtype == np.uint8 and np.array_equal(img, parse_variant("clahe")(raw))


def test_show_draws_one_overlay_per_mask_boxes_truth_and_scores(api_db: dict[str, Any]) -> None:
    from matplotlib.image import AxesImage
    from matplotlib.patches import Rectangle

    run = api_db["sam"]
    seg = run.segments(variant="raw")
    key = str(seg.key.iloc[0])
    n_masks = int((seg.key == key).sum())
    fig = run.show(key, "raw")
    [ax] = fig.axes
    assert len([a for a in ax.get_children() if isinstance(a, AxesImage)]) == 1 + n_masks  # the image + overlays
    boxes = [p for p in ax.patches if isinstance(p, Rectangle)]
    assert len(boxes) == n_masks * 5  # each prompt box and its K = 4 jittered boxes
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert sum("score" in t for t in texts) == n_masks and "ground truth" in texts
    assert ax.collections  # the ground-truth contour


def test_compare_equals_the_report_table(api_db: dict[str, Any], tmp_path: Path) -> None:
    settings = Settings(**api_db["urls"])
    report = json.loads(build_report(["nb-sam", "nb-grabcut"], tmp_path, settings=settings, fmt="json").read_text())
    df = pp.compare(("nb-sam", "raw"), ("nb-sam", "clahe"), database_url=api_db["urls"]["database_url"])
    expected = [c for c in report["comparisons"] if c["kind"] == "variant" and c["a"]["run"] == "nb-sam"]
    assert list(df.metric) == [c["metric"] for c in expected]
    for row, exp in zip(df.to_dict("records"), expected, strict=True):
        for field in ("n", "mean_a", "mean_b", "mean_diff", "wilcoxon_p", "ci_low", "ci_high", "fraction_improved"):
            assert row[field] == pytest.approx(exp[field], rel=1e-12, nan_ok=True), field  # the same computation
    across = pp.compare("nb-sam", "nb-grabcut", metric="dice", database_url=api_db["urls"]["database_url"])
    [exp] = [
        c for c in report["comparisons"] if c["kind"] == "run" and c["metric"] == "dice" and c["a"]["variant"] == "raw"
    ]
    assert across.iloc[0]["mean_diff"] == pytest.approx(exp["mean_diff"], rel=1e-12)
    assert api_db["sam"].compare("clahe").equals(df)
    assert report["findings"] and all(f["sentence"] for f in report["findings"])


def test_repr_html_shows_configuration_and_status(api_db: dict[str, Any]) -> None:
    page = api_db["grabcut"]._repr_html_()
    assert "grabcut" in page and "raw = " in page and f"{IMAGES} done" in page


def test_bad_input_names_close_matches(api_db: dict[str, Any]) -> None:
    url = api_db["urls"]["database_url"]
    with pytest.raises(LookupError, match="did you mean nb-sam"):
        pp.run("nb-sma", database_url=url)
    run = api_db["sam"]
    key = str(run.segments(variant="raw").key.iloc[0])
    with pytest.raises(LookupError, match="did you mean clahe"):
        run.mask(key, "clahee")
    with pytest.raises(LookupError, match=f"did you mean {key}"):
        run.mask(key[:-1] + "x", "raw")
    with pytest.raises(LookupError, match="did you mean score"):
        run.segments(columns=["scor"])
    with pytest.raises(LookupError, match="prompt"):
        run.mask(key, "raw", prompt=99)


def test_a_missing_mask_object_is_an_error_naming_its_key(api_db: dict[str, Any]) -> None:
    run = api_db["grabcut"]
    key = str(run.segments(variant="raw").key.iloc[-1])
    path = api_db["root"] / "store" / "nb-grabcut" / "masks" / key / "raw" / "0.png"
    saved = path.read_bytes()
    path.unlink()
    try:
        with pytest.raises(pp.MaskMissingError, match=key):
            run.mask(key, "raw", 0)
    finally:
        path.write_bytes(saved)


def test_dry_run_counts_and_registers_nothing(api_db: dict[str, Any], phantom_dir: Path) -> None:
    url = api_db["urls"]["database_url"]
    plan = pp.plan(str(phantom_dir / "images"), "nb-new", model="grabcut", annotations=str(phantom_dir / "labels.csv"),
                   gt_masks=str(phantom_dir / "masks"), database_url=url)  # fmt: skip
    assert plan.images == 12 and plan.with_masks == 12 and plan.annotated is not None and plan.annotated > 0
    assert not plan.existing
    assert plan.images_per_s is not None and plan.estimate_s == pytest.approx(12 / plan.images_per_s)
    assert "nb-new" not in set(pp.runs(database_url=url)["run"])
    again = pp.plan(str(phantom_dir / "images"), "nb-grabcut", model="grabcut", variants=["raw"],
                    annotations=str(phantom_dir / "labels.csv"), gt_masks=str(phantom_dir / "masks"),
                    **api_db["urls"])  # fmt: skip
    assert again.existing and again.same_config and again.images == 12 and again.finished == IMAGES
    assert any("would be skipped" in line for line in again.lines())
    other = pp.plan(str(phantom_dir / "images"), "nb-grabcut", model="grabcut", variants=["raw", "clahe"],
                    database_url=url)  # fmt: skip
    assert other.existing and other.same_config is False
    assert any("another configuration" in line for line in other.lines())


def test_the_cli_dry_run_prints_the_plan(api_db: dict[str, Any], phantom_dir: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIXELPERFECT_")}
    env["PIXELPERFECT_DATABASE_URL"] = api_db["urls"]["database_url"]
    out = subprocess.run(
        [sys.executable, "-c", "from pixelperfect.cli import app; app()", "submit", str(phantom_dir / "images"),
         "--run", "cli-dry", "--model", "grabcut", "--dry-run"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "12 images under" in out.stdout and "nothing registered" in out.stdout and "estimate:" in out.stdout
    assert "cli-dry" not in set(pp.runs(database_url=api_db["urls"]["database_url"])["run"])


def test_reading_the_api_loads_no_torch(api_db: dict[str, Any]) -> None:
    """``import pixelperfect as pp`` and reading results (runs, segments, compare, masks) load neither torch nor
    segment-anything; the import alone loads neither pandas nor the API."""
    code = (
        "import json, sys; import pixelperfect as pp; light = 'pandas' not in sys.modules and "
        "'pixelperfect.api' not in sys.modules; "
        f"url = {api_db['urls']['database_url']!r}; pp.runs(database_url=url); r = pp.run('nb-sam', database_url=url); "
        "df = r.segments(); pp.compare('nb-sam', ('nb-sam', 'clahe'), database_url=url); "
        "r.mask(str(df.key.iloc[0]), 'raw'); "
        "print(json.dumps({'light': light, 'heavy': [m for m in ('torch', 'segment_anything') if m in sys.modules]}))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIXELPERFECT_")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"light": True, "heavy": []}
