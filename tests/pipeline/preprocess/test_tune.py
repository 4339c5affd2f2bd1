"""Parameter search for a preprocessing step, as functions and through the ``tune`` command."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from pixelperfect.cli.imaging import sample_keys
from pixelperfect.pipeline.preprocess.tune import build_grid, histogram_entropy, parse_param_range, score_steps
from pixelperfect.pipeline.preprocess.variants import parse_step
from pixelperfect.synthetic.phantoms import make_phantom, write_phantoms


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    return [(make_phantom(i, size=96).image >> 4).astype(np.uint8) for i in range(3)]


def test_parse_param_range() -> None:
    assert parse_param_range("k=3:19:2") == ("k", [3, 5, 7, 9, 11, 13, 15, 17, 19])
    assert parse_param_range("clip=1:2:0.25") == ("clip", [1.0, 1.25, 1.5, 1.75, 2.0])
    assert parse_param_range(" radius = 3,5,7 ") == ("radius", [3, 5, 7])
    assert parse_param_range("k=3") == ("k", [3])
    for bad in ("k", "k=3:1:2", "k=3:9:0", "k=a:b:c", "k=1:2", "1k=3", "k=0:1000:1"):
        with pytest.raises(ValueError):
            parse_param_range(bad)


def test_histogram_entropy() -> None:
    assert histogram_entropy(np.zeros((4, 4), np.uint8)) == 0.0
    assert histogram_entropy(np.array([[0, 255], [0, 255]], np.uint8)) == pytest.approx(1.0)
    assert histogram_entropy(np.arange(256, dtype=np.uint8).reshape(16, 16)) == pytest.approx(8.0)


def test_build_grid_expands_validates_and_skips() -> None:
    grid = build_grid("canny_blend", [("low", [0.1, 0.5]), ("high", [0.3, 0.6])], {"blur": 5})
    assert [(s.params()["low"], s.params()["high"]) for s in grid.steps] == [(0.1, 0.3), (0.1, 0.6), (0.5, 0.6)]
    assert all(s.params()["blur"] == 5 for s in grid.steps)
    assert len(grid.skipped) == 1 and "high" in grid.skipped[0][1]
    with pytest.raises(ValueError, match="unknown preprocessing step"):
        build_grid("nosuch", [])
    with pytest.raises(ValueError, match="no parameter 'q'"):
        build_grid("gaussian", [("q", [1])])
    with pytest.raises(ValueError, match="no valid setting"):
        build_grid("gaussian", [("k", [2, 4])])


def test_score_steps_identity_is_perfect_and_blur_loses_similarity(images: list[np.ndarray]) -> None:
    identity, light, heavy = parse_step("identity"), parse_step("gaussian(k=3)"), parse_step("gaussian(k=15)")
    rows = score_steps(images, [identity, light, heavy])
    assert rows[0].ssim_mean == pytest.approx(1.0) and rows[0].entropy_delta_mean == pytest.approx(0.0)
    assert 1.0 > rows[1].ssim_mean > rows[2].ssim_mean
    assert rows[2].spec == "gaussian(k=15,sigma=0.0)" and rows[2].ms_per_image >= 0
    assert rows[1].ssim_std >= 0 and rows[1].params == {"k": 3, "sigma": 0.0}
    with pytest.raises(ValueError, match="no images"):
        score_steps([], [identity])


def test_sample_keys_is_seeded_uniform_and_sorted() -> None:
    keys = [f"k{i:03d}" for i in range(100)]
    a, b = sample_keys(iter(keys), 10, seed=1), sample_keys(iter(keys), 10, seed=1)
    assert a == b == sorted(a) and len(set(a)) == 10
    assert sample_keys(iter(keys), 10, seed=2) != a
    assert sample_keys(iter(keys[:4]), 10, seed=1) == keys[:4]


def test_tune_command(tmp_path: Path, cli: typer.Typer) -> None:
    write_phantoms(tmp_path, 3, size=64)
    runner = CliRunner()
    result = runner.invoke(cli, ["tune", str(tmp_path / "images"), "--step", "gaussian", "--param", "k=3:7:2",
                                 "--sample", "2"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "k=3" in result.output and "k=7" in result.output and "SSIM" in result.output
    assert "best SSIM" in result.output
    url = f"file://{tmp_path / 'images'}"
    result = runner.invoke(cli, ["tune", url, "--step", "entropy", "--param", "radius=1,2", "--sample", "1"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli, ["tune", url, "--step", "gaussian", "--param", "k=2:4:2"])
    assert result.exit_code == 2 and "odd integer" in result.output
    result = runner.invoke(cli, ["tune", str(tmp_path / "nowhere"), "--step", "gaussian", "--param", "k=3"])
    assert result.exit_code == 2
