"""Concept runs at submit: the SAM 3 directory, the phrases and the exemplars are checked before anything is
registered; a good submission records the phrases, the weights' sha256 and the exemplar boxes."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import inspect, select

from pixelperfect.db.models import Annotation, Run
from pixelperfect.db.session import get_engine, session_scope
from pixelperfect.pipeline.model.sam3_files import weights_sha256
from pixelperfect.pipeline.options import ConceptSettings, ProcessSettings
from pixelperfect.producer.enqueue import SubmitError, SubmitRequest, submit
from tests.conftest import embedded_settings
from tests.sam3_tiny import tiny_files, write_tiny_dir


@pytest.fixture(scope="module")
def sam3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_dir(tmp_path_factory.mktemp("sam3") / "sam3")


def _request(phantom_dir: Path, checkpoint: Path, *concepts: str, **extra: object) -> SubmitRequest:
    return SubmitRequest(
        source=str(phantom_dir / "images"), run="c", variants=["raw"], model="sam3", checkpoint=str(checkpoint),
        prompts="concept", process=ProcessSettings(concept=ConceptSettings(concepts=concepts)), **extra,  # type: ignore[arg-type]
    )  # fmt: skip


@pytest.mark.parametrize(
    ("concepts", "why"),
    [
        (("lung opacity", "  "), "is empty"),
        ((" ".join("abcdefghijklmnopqrstuvwxyzabcdef"),), "at most 32"),
        ((), "at least one --concept"),
    ],
)
def test_bad_phrases_are_refused_before_anything_is_registered(
    tmp_path: Path, phantom_dir: Path, sam3_dir: Path, concepts: tuple[str, ...], why: str
) -> None:
    settings = embedded_settings(tmp_path)
    with pytest.raises(SubmitError, match=why):
        submit(_request(phantom_dir, sam3_dir, *concepts), settings, execute=False)
    assert not inspect(get_engine(settings.database_url)).has_table("runs")


def test_a_model_without_text_encoder_and_mismatched_modes_are_refused(
    tmp_path: Path, phantom_dir: Path, sam3_dir: Path
) -> None:
    settings = embedded_settings(tmp_path)
    blind = write_tiny_dir(tmp_path / "blind", text=False)
    with pytest.raises(SubmitError, match="no text encoder"):
        submit(_request(phantom_dir, blind, "lung opacity"), settings, execute=False)
    with pytest.raises(SubmitError, match="needs --model sam3"):
        req = _request(phantom_dir, sam3_dir, "lung opacity")
        req.model, req.checkpoint = "sam_tiny", None
        submit(req, settings, execute=False)
    with pytest.raises(SubmitError, match="only concept prompts"):
        req = _request(phantom_dir, sam3_dir, "lung opacity")
        req.prompts = "auto"
        submit(req, settings, execute=False)
    with pytest.raises(SubmitError, match="lacks"):
        submit(_request(phantom_dir, tmp_path, "lung opacity"), settings, execute=False)
    assert not inspect(get_engine(settings.database_url)).has_table("runs")


def test_exemplars_for_images_not_in_the_run_are_refused(tmp_path: Path, phantom_dir: Path, sam3_dir: Path) -> None:
    settings = embedded_settings(tmp_path)
    key = sorted((phantom_dir / "images").iterdir())[0].stem
    bad = tmp_path / "ex.csv"
    bad.write_text(f"key,x1,y1,x2,y2,label\n{key},1,2,30,40,positive\nnobody,1,2,30,40,negative\n")
    with pytest.raises(SubmitError, match="not in the run: nobody"):
        submit(_request(phantom_dir, sam3_dir, "lung opacity", exemplars=str(bad)), settings, execute=False)
    assert not inspect(get_engine(settings.database_url)).has_table("runs")

    good = tmp_path / "good.csv"
    good.write_text(f"key,x1,y1,x2,y2,label\n{key},1,2,30,40,positive\n{key},50,60,70,80,negative\n")
    req = _request(phantom_dir, sam3_dir, " lung opacity ", exemplars=str(good))
    result = submit(req, settings, execute=False)
    with session_scope(settings.database_url) as session:
        run = session.get(Run, result.run_id)
        assert run is not None and run.prompt_mode == "concept"
        assert run.settings["concept"]["concepts"] == ["lung opacity"]  # stripped
        assert run.checkpoint_sha256 == weights_sha256(tiny_files(0))
        rows = session.execute(select(Annotation.kind, Annotation.x1, Annotation.label).order_by(Annotation.index))
        assert [tuple(r) for r in rows] == [("exemplar", 1.0, 1), ("exemplar", 50.0, 0)]
