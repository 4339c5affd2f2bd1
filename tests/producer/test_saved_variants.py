"""Saved variants: ``tune --save NAME`` writes the best setting into the variants file, ``submit --variant NAME``
runs it; saved names never shadow built-ins; bad files and unknown names fail naming the file."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from pixelperfect.config import use_settings
from pixelperfect.db import repo
from pixelperfect.db.session import session_scope
from pixelperfect.pipeline.preprocess.variants import parse_variant
from pixelperfect.producer.saved_variants import (
    VariantsFileError,
    load_variants,
    resolve_variants,
    save_variant,
    suggested_name,
)
from pixelperfect.synthetic.phantoms import write_phantoms


def test_save_load_and_resolve(tmp_path: Path) -> None:
    file = tmp_path / "v.toml"
    assert load_variants(file) == {}
    assert save_variant(file, "smooth", "gaussian(k=5)") is False
    assert save_variant(file, "edges.2", "clahe(clip=2.0,tile=8)|canny_blend(alpha=0.3)") is False
    assert save_variant(file, "smooth", "gaussian(k=7)") is True  # replaced
    assert load_variants(file) == {
        "edges.2": "clahe(clip=2.0,tile=8)|canny_blend(alpha=0.3)",
        "smooth": "gaussian(k=7)",
    }
    resolved = resolve_variants(["raw", "smooth", "edges.2", "sobel", "gaussian(k=3)", "x=median(k=3)"], file)
    assert resolved == ["raw", "smooth=gaussian(k=7)", "edges.2=clahe(clip=2.0,tile=8)|canny_blend(alpha=0.3)",
                        "sobel", "gaussian(k=3)", "x=median(k=3)"]  # fmt: skip
    variant = parse_variant(resolved[1])
    assert variant.name == "smooth" and variant.spec == parse_variant("gaussian(k=7)").spec
    with pytest.raises(VariantsFileError, match=r"unknown variant 'nosuch'.*v\.toml.*smooth"):
        resolve_variants(["nosuch"], file)


def test_saved_names_never_shadow_builtins_and_bad_files_are_named(tmp_path: Path) -> None:
    file = tmp_path / "v.toml"
    with pytest.raises(VariantsFileError, match="built-in"):
        save_variant(file, "clahe", "gaussian(k=5)")
    with pytest.raises(VariantsFileError, match="lower-case"):
        save_variant(file, "Bad Name", "gaussian(k=5)")
    with pytest.raises(VariantsFileError, match="odd"):
        save_variant(file, "even", "gaussian(k=4)")
    assert not file.exists()
    file.write_text('[variants]\nraw = "gaussian(k=5)"\n')  # edited by hand
    with pytest.raises(VariantsFileError, match="built-in"):
        load_variants(file)
    file.write_text("[variants\n")
    with pytest.raises(VariantsFileError, match="cannot read"):
        load_variants(file)
    assert suggested_name("gaussian(k=5)") == "gaussian_k5"
    assert suggested_name("clahe(clip=2.5,tile=8)") == "clahe_clip2.5_tile8"


@pytest.mark.integration
def test_tune_saves_and_submit_runs_the_saved_variant(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pixelperfect.cli import app

    write_phantoms(tmp_path / "ph", 2, size=64)
    monkeypatch.chdir(tmp_path)  # the default variants file is in the working directory
    monkeypatch.setenv("PIXELPERFECT_DATABASE_URL", f"sqlite:///{tmp_path / 'pp.db'}")
    monkeypatch.setenv("PIXELPERFECT_STORE_URL", f"file://{tmp_path / 'store'}")
    monkeypatch.delenv("PIXELPERFECT_BROKER_URL", raising=False)
    use_settings(None)
    runner = CliRunner()
    images = str(tmp_path / "ph" / "images")
    tuned = runner.invoke(app, ["tune", images, "--step", "gaussian", "--param", "k=3:7:2", "--sample", "2",
                                "--save", "smooth", "--by", "entropy"])  # fmt: skip
    assert tuned.exit_code == 0, tuned.output
    text = " ".join(tuned.output.split())
    assert "best SSIM to original: --variant 'gaussian_k" in text and "most entropy added: --variant" in text
    saved = load_variants(tmp_path / "pixelperfect-variants.toml")
    assert list(saved) == ["smooth"] and saved["smooth"].startswith("gaussian(k=")
    assert f"most entropy added: --variant '{suggested_name(saved['smooth'])}={saved['smooth']}'" in text

    shadow = runner.invoke(app, ["tune", images, "--step", "gaussian", "--param", "k=3", "--save", "clahe"])
    assert shadow.exit_code == 2 and "built-in" in shadow.output
    unknown = runner.invoke(app, ["submit", images, "--run", "u", "--model", "grabcut", "--variant", "nosuch"])
    assert unknown.exit_code == 2 and "pixelperfect-variants.toml" in " ".join(unknown.output.split())

    labels = str(tmp_path / "ph" / "labels.csv")
    args = ["submit", images, "--run", "s", "--model", "grabcut", "--annotations", labels, "--variant", "raw"]
    submitted = runner.invoke(app, [*args, "--variant", "smooth"])
    assert submitted.exit_code == 0, submitted.output
    with session_scope(f"sqlite:///{tmp_path / 'pp.db'}") as s:
        run = repo.get_run(s, name="s")
        assert run is not None
        assert [v["name"] for v in run.variants] == ["raw", "smooth"]
        assert run.variants[1]["spec"] == parse_variant(saved["smooth"]).spec
