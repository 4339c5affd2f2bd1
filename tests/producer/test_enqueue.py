"""Without a broker the producer runs nothing itself: embedded runs come from above (``pixelperfect.embedded``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import inspect

from pixelperfect.db.session import get_engine
from pixelperfect.producer.enqueue import SubmitError, SubmitRequest, dispatch, submit
from tests.conftest import embedded_settings


def test_embedded_submit_without_a_runner_is_refused_before_anything_is_registered(
    tmp_path: Path, phantom_dir: Path
) -> None:
    settings = embedded_settings(tmp_path)
    req = SubmitRequest(source=str(phantom_dir / "images"), run="r", variants=["raw"], model="grabcut")
    with pytest.raises(SubmitError, match=r"pixelperfect\.embedded"):
        submit(req, settings)
    assert not inspect(get_engine(settings.database_url)).has_table("runs")  # nothing registered
    with pytest.raises(SubmitError, match="no batch runner"):
        dispatch(1, "r", [["a.png"]], settings)


def test_the_given_runner_receives_every_batch_in_order(tmp_path: Path, phantom_dir: Path) -> None:
    settings = embedded_settings(tmp_path, batch_size=5)
    seen: list[tuple[int, list[list[str]]]] = []

    def runner(run_id: int, batches: list[list[str]], _settings: object, *, on_progress: object = None) -> None:
        seen.append((run_id, batches))

    req = SubmitRequest(source=str(phantom_dir / "images"), run="r", variants=["raw"], model="grabcut")
    result = submit(req, settings, run_batches=runner)
    keys = [k for _, batches in seen for batch in batches for k in batch]
    assert {run_id for run_id, _ in seen} == {result.run_id}
    assert keys == sorted(keys) and len(keys) == result.pending == 12
    assert [len(b) for _, batches in seen for b in batches] == [5, 5, 2]


def test_dicom_outputs_are_refused_for_a_png_source(tmp_path: Path, phantom_dir: Path) -> None:
    """``--output png,dicom-sr`` (which implies dicom-seg) over PNGs: refused at submit, nothing registered."""
    settings = embedded_settings(tmp_path)
    for outputs in ("png,dicom-sr", "png,dicom-seg"):
        req = SubmitRequest(source=str(phantom_dir / "images"), run="r", variants=["raw"], model="grabcut",
                            outputs=(outputs,))  # fmt: skip
        with pytest.raises(SubmitError, match="needs DICOM sources"):
            submit(req, settings, run_batches=lambda *a, **k: None)
    assert not inspect(get_engine(settings.database_url)).has_table("runs")
