"""With a broker the GPU worker builds no DICOM-SEG: ``run_batch(publish_segs=...)`` persists the batch and hands
its done images on (the ``pixelperfect.build_segs`` task on queue ``seg``), and that task's code path builds each
missing SEG once, from the stored masks and the re-fetched source, equal to the one embedded mode builds."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from sqlalchemy import select

from pixelperfect.config import use_settings
from pixelperfect.db.models import Image, SegObject
from pixelperfect.db.session import session_scope
from pixelperfect.embedded import submit
from pixelperfect.producer.enqueue import SubmitRequest
from pixelperfect.worker import segretry
from pixelperfect.worker.app import SEG_QUEUE, app
from pixelperfect.worker.batch import run_batch
from tests.conftest import embedded_settings
from tests.orthanc import dicom_phantoms

pytestmark = pytest.mark.integration


def _segs(url: str) -> dict[tuple[int, str], str]:
    with session_scope(url) as s:
        return {(r.image_id, r.variant): str(r.object_key) for r in s.scalars(select(SegObject)) if r.object_key}


def _frames(url: str) -> np.ndarray:
    data = Path(url.removeprefix("file://")).read_bytes()
    return np.asarray(pydicom.dcmread(io.BytesIO(data)).pixel_array)


def test_build_segs_routes_to_the_seg_queue() -> None:
    assert app.conf.task_routes["pixelperfect.build_segs"] == {"queue": SEG_QUEUE} == {"queue": "seg"}
    from pixelperfect.worker import tasks

    assert tasks.build_segs.name in app.tasks and tasks.build_segs.acks_late


def _measures(url: str) -> list[list[tuple[str, float]]]:
    import highdicom as hd

    sr = hd.sr.srread(io.BytesIO(Path(url.removeprefix("file://")).read_bytes()))
    return [sorted((m.name.value, float(m.value)) for m in g.get_measurements())
            for g in sr.content.get_planar_roi_measurement_groups()]  # fmt: skip


@pytest.mark.parametrize("outputs", ["png,dicom-seg", "png,dicom-sr"])
def test_published_segs_are_built_off_the_batch(tmp_path: Path, outputs: str) -> None:
    dicom_phantoms(tmp_path / "archive", 3, seed=62)
    settings = embedded_settings(tmp_path)
    use_settings(settings)
    common = {"source": str(tmp_path / "archive" / "images"), "variants": ["raw", "clahe"],
              "annotations": str(tmp_path / "archive" / "labels.csv"), "outputs": (outputs,)}  # fmt: skip
    submit(SubmitRequest(run="inline", **common), settings)  # embedded: built in-process, as before
    queued = submit(SubmitRequest(run="queued", **common), settings, execute=False)
    with session_scope(settings.database_url) as s:
        keys = [i.key for i in s.scalars(select(Image).where(Image.run_id == queued.run_id))]
    published: list[tuple[int, list[int]]] = []
    summary = run_batch(queued.run_id, keys, publish_segs=lambda run_id, ids: published.append((run_id, ids)))
    assert summary.done == 3
    with session_scope(settings.database_url) as s:
        done = sorted(i.id for i in s.scalars(select(Image).where(Image.run_id == queued.run_id)))
        queued_segs = s.scalars(select(SegObject).where(SegObject.run_id == queued.run_id)).all()
    assert published == [(queued.run_id, done)] and not queued_segs  # nothing built by the batch

    report = segretry.build_segs(queued.run_id, done)  # the task's work, on queue seg
    assert report.failed == 0 and report.rebuilt > 0
    assert segretry.build_segs(queued.run_id, done).rebuilt == 0  # a redelivered message builds nothing again
    inline, built = _segs(settings.database_url), _segs(settings.database_url)
    inline = {k: v for k, v in inline.items() if k[0] not in done}
    built = {k: v for k, v in built.items() if k[0] in done}
    assert len(built) == len(inline) == report.rebuilt
    for (_, variant), url in sorted(built.items()):  # the same masks as the SEGs embedded mode built in-process
        twin = next(
            u for (_, v), u in sorted(inline.items()) if v == variant and Path(u).parent.name == Path(url).parent.name
        )
        assert np.array_equal(_frames(url), _frames(twin))
    if outputs.endswith("dicom-sr"):  # the seg queue's SRs report what the in-process ones do
        with session_scope(settings.database_url) as s:
            rows = list(s.scalars(select(SegObject)))
        assert rows and all(r.sr_key and r.sr_error is None for r in rows)
        srs = {(r.run_id, Path(str(r.sr_key)).parent.name, r.variant): str(r.sr_key) for r in rows}
        for (run_id, name, variant), url in srs.items():
            if run_id == queued.run_id:
                twin = next(u for (other, n, v), u in srs.items() if other != run_id and (n, v) == (name, variant))
                assert _measures(url) == _measures(twin) and _measures(url)


def test_a_seg_publish_that_fails_does_not_fail_the_persisted_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    from pixelperfect.worker import tasks

    def down(*_: object, **__: object) -> None:
        raise ConnectionError("broker down")

    monkeypatch.setattr(tasks.build_segs, "apply_async", down)
    tasks.publish_segs(1, [1, 2])  # logged; `retry RUN --seg` builds them
