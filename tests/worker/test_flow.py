"""The worker's overlapped pipeline on CPU: bounded prefetch, the model waiting for slow uploads, results equal to
the plain sequential pipeline, one model load per process, and a failed upload leaving nothing half-written."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import select

from pixelperfect.db import repo
from pixelperfect.db.models import Image, Segment
from pixelperfect.db.session import session_scope
from pixelperfect.embedded import SubmitRequest, submit
from pixelperfect.inputs.sources import absolute_url
from pixelperfect.pipeline.decode.reader import decode_image
from pixelperfect.pipeline.model.protocol import MaskPrediction
from pixelperfect.pipeline.stages import ImageInput, process_images
from pixelperfect.storage import LocalStore
from pixelperfect.worker import flow
from pixelperfect.worker.batch import run_batch
from pixelperfect.worker.pausing import StoreFailure
from pixelperfect.worker.runtime import get_runtime
from tests.conftest import count_model_loads, embedded_settings


class Events:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.gets: list[tuple[float, str]] = []
        self.puts_done = 0
        self.encodes: list[tuple[float, float, int]] = []  # start, end, images fetched at start
        self.predicted = 0
        self.max_in_flight = 0


class SpyStore(LocalStore):
    def __init__(self, root: Path, events: Events, put_delay: float = 0.0, fail_on: str | None = None) -> None:
        super().__init__(root)
        self.events, self.put_delay, self.fail_on = events, put_delay, fail_on

    def get(self, key: str) -> bytes:
        with self.events.lock:
            self.events.gets.append((time.perf_counter(), key))
        return super().get(key)

    def put(self, key: str, data: bytes, content_type: str | None = None) -> None:
        time.sleep(self.put_delay)
        if self.fail_on and self.fail_on in key:
            raise ConnectionError(f"store refused {key}")
        super().put(key, data, content_type)
        with self.events.lock:
            self.events.puts_done += 1


class SlowModel:
    """A stand-in model: ``encode`` takes ``delay`` s per call, one mask per box (the box itself)."""

    name = "fake"

    def __init__(self, events: Events, delay: float) -> None:
        self.events, self.delay = events, delay

    def encode(self, images: list[Any]) -> list[Any]:
        start = time.perf_counter()
        fetched = len(self.events.gets)
        time.sleep(self.delay)
        self.events.encodes.append((start, time.perf_counter(), fetched))
        return [img.shape for img in images]

    def predict_boxes(self, shape: Any, boxes: np.ndarray) -> MaskPrediction:
        masks = np.zeros((len(boxes), *shape), bool)
        for m, (x1, y1, x2, y2) in zip(masks, boxes.astype(int), strict=True):
            m[y1:y2, x1:x2] = True
        with self.events.lock:
            self.events.predicted += 1
            self.events.max_in_flight = max(self.events.max_in_flight, self.events.predicted - self.events.puts_done)
        n = len(boxes)
        return MaskPrediction(masks, np.full((n, 3), 0.5, np.float32), np.zeros(n, np.int64), np.ones(n, np.float32))


def _setup(tmp_path: Path, phantom_dir: Path, n: int, **settings: Any) -> tuple[int, list[str], Any]:
    cfg = embedded_settings(tmp_path, model="grabcut", **settings)
    images = tmp_path / "images"
    images.mkdir()
    labels = ["patientId,x,y,width,height,Target"]
    for i in range(n):
        (images / f"img{i:02d}.png").write_bytes((phantom_dir / "images" / f"phantom-{i % 12:05d}.png").read_bytes())
        labels.append(f"img{i:02d},40,50,100,90,1")
    (tmp_path / "labels.csv").write_text("\n".join(labels) + "\n")
    result = submit(SubmitRequest(source=str(images), run="pipe", variants=["raw"], model="grabcut",
                                  annotations=str(tmp_path / "labels.csv")), cfg, execute=False)  # fmt: skip
    return result.run_id, sorted(p.name for p in images.iterdir()), cfg


def _install(run_id: int, model: Any, store: SpyStore, source: SpyStore) -> None:
    rt = get_runtime()
    run = rt.run_spec(run_id)
    rt._segmenters[(run.model, run.checkpoint)] = model
    rt._stores[run.store_url] = store
    rt._stores[run.source_url] = source


def test_next_group_is_fetched_while_the_model_works_and_prefetch_is_bounded(tmp_path: Path, phantom_dir: Path) -> None:
    run_id, keys, _cfg = _setup(tmp_path, phantom_dir, 12, encoder_batch=2, batch_size=12)
    events = Events()
    _install(run_id, SlowModel(events, 0.15), SpyStore(tmp_path / "store", events),
             SpyStore(tmp_path / "images", events))  # fmt: skip
    summary = run_batch(run_id, keys)
    assert summary.done == 12 and summary.segments == 12
    size, ahead = 2, flow.PREFETCH_GROUPS
    assert len(events.encodes) == 6
    for i, (_start, end, fetched_at_start) in enumerate(events.encodes):
        # bounded: never more than the group in hand plus PREFETCH_GROUPS + 1 more groups fetched
        assert fetched_at_start <= (i + 2 + ahead) * size, (i, fetched_at_start)
        if i + 1 < len(events.encodes):  # overlap: the next group's images were read while this group encoded
            next_keys = set(keys[(i + 1) * size : (i + 2) * size])
            assert max(t for t, k in events.gets if k in next_keys) < end


def test_model_waits_for_slow_uploads_instead_of_piling_up_masks(tmp_path: Path, phantom_dir: Path) -> None:
    run_id, keys, _cfg = _setup(tmp_path, phantom_dir, 16, encoder_batch=2, batch_size=16)
    events = Events()
    _install(run_id, SlowModel(events, 0.0), SpyStore(tmp_path / "store", events, put_delay=0.05),
             SpyStore(tmp_path / "images", events))  # fmt: skip
    assert run_batch(run_id, keys).done == 16
    assert events.puts_done == 16
    # images finished by the model but not yet uploaded: at most the post slots plus the group in hand
    assert events.max_in_flight <= (flow.POST_GROUPS + 1) * 2, events.max_in_flight


def test_failed_upload_raises_and_writes_no_row(tmp_path: Path, phantom_dir: Path) -> None:
    run_id, keys, cfg = _setup(tmp_path, phantom_dir, 8, encoder_batch=2, batch_size=8)
    events = Events()
    store = SpyStore(tmp_path / "store", events, put_delay=0.01, fail_on="img05")
    _install(run_id, SlowModel(events, 0.01), store, SpyStore(tmp_path / "images", events))
    with pytest.raises(StoreFailure, match="img05") as raised:  # counted against the run (worker/pausing.py)
        run_batch(run_id, keys)
    assert isinstance(raised.value.__cause__, ConnectionError) and "store" in str(raised.value)
    settled = events.puts_done
    time.sleep(0.2)
    assert events.puts_done == settled  # no upload of this batch still running after it raised
    with session_scope(cfg.database_url) as session:
        assert repo.status_counts(session, run_id=run_id) == {"queued": 8, "done": 0, "failed": 0}


def test_a_store_refusing_n_images_in_a_row_pauses_the_run_and_a_good_batch_resets_the_count(
    tmp_path: Path, phantom_dir: Path
) -> None:
    """worker/pausing.py: 2 images refused, then 2 written (the count starts again), then 4 refused in a row: the
    run pauses itself (reason recorded), its images stay queued with their leases released, and its next batch is
    acknowledged without model work."""
    from pixelperfect.db import control

    run_id, keys, cfg = _setup(tmp_path, phantom_dir, 10, encoder_batch=2, batch_size=2, pause_after_failed_writes=4)
    events = Events()
    store = SpyStore(tmp_path / "store", events, fail_on="img0")
    _install(run_id, SlowModel(events, 0.0), store, SpyStore(tmp_path / "images", events))
    with pytest.raises(StoreFailure):
        run_batch(run_id, keys[0:2])  # 2 in a row
    store.fail_on = None
    assert run_batch(run_id, keys[2:4]).done == 2  # written: the count starts again
    store.fail_on = "img"
    with pytest.raises(StoreFailure):
        run_batch(run_id, keys[4:6])  # 2 in a row
    assert run_batch(run_id, keys[6:8]).paused  # 4 in a row: paused, not raised
    encodes = len(events.encodes)
    later = run_batch(run_id, keys[8:10])
    assert not later.paused and later.skipped == 2 and len(events.encodes) == encodes  # no model work
    with session_scope(cfg.database_url) as session:
        assert control.run_state(session, run_id=run_id) == "paused"
        assert repo.status_counts(session, run_id=run_id) == {"queued": 8, "done": 2, "failed": 0}
        why = session.scalar(select(Image.run.property.mapper.class_.state_reason).limit(1))
        leased = session.scalar(select(Image.id).where(Image.lease_owner.is_not(None)).limit(1))
    assert why is not None and "4 consecutive image(s)" in why and f"store file://{tmp_path / 'store'}" in why
    assert leased is None


@pytest.mark.integration
def test_pipelined_rows_equal_the_sequential_pipeline_and_the_model_loads_once(
    tmp_path: Path, phantom_dir: Path, tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = embedded_settings(tmp_path, encoder_batch=2, batch_size=5)
    loads = count_model_loads(monkeypatch)
    req = SubmitRequest(
        source=str(phantom_dir / "images"),
        run="eq",
        variants=["raw", "clahe"],
        model="sam_tiny",
        checkpoint=str(tiny_checkpoint),
        annotations=str(phantom_dir / "labels.csv"),
        batch_size=5,
    )
    result = submit(req, cfg)  # 12 images in batches of 5, groups of 2: overlapped
    rt = get_runtime()
    assert loads == ["sam_tiny"]  # three batches, one model
    run = rt.run_spec(result.run_id)
    segmenter = rt.segmenter(run)
    with session_scope(cfg.database_url) as session:
        keys = repo.keys_with_status(session, run_id=result.run_id, statuses=["done"])
        boxes = repo.boxes_for(session, run_id=result.run_id, keys=keys)
        rows = {(r.image.key, r.variant, r.prompt_index): r for r in session.scalars(select(Segment))}
        assert session.scalar(select(Image.timings).limit(1)).keys() >= {"decode", "encode", "post", "upload"}
    source = LocalStore(absolute_url(str(phantom_dir / "images"))[len("file://") :])
    inputs = [ImageInput(k, decode_image(source.get(k), k).pixels, boxes.get(k, [])) for k in sorted(keys)]
    # the same encoder groups as the worker (batches of 5 in listing order, groups of 2): bitwise-equal floats
    groups = [b[i : i + 2] for b in (inputs[j : j + 5] for j in range(0, len(inputs), 5)) for i in range(0, len(b), 2)]
    expected = [r for g in groups for r in process_images(g, run.variants, segmenter, run.process)]
    n = 0
    for image in expected:
        for seg in image.segments:
            row = rows[(image.key, seg.variant, seg.prompt_index)]
            for column in ("score", "scores", "chosen", "stability", "area", "mask_boxes", "consistency_std",
                           "consistency_iou", "box_iou", "perturbations"):  # fmt: skip
                assert getattr(row, column) == getattr(seg, column), column
            n += 1
    assert n == len(rows) > 0
    assert loads == ["sam_tiny"]


class BrokenForOne(SlowModel):
    """Returns a prediction that scoring cannot use (one mask short) for images of one size."""

    def predict_boxes(self, shape: Any, boxes: np.ndarray) -> MaskPrediction:
        pred = super().predict_boxes(shape, boxes)
        if self.events.predicted == 3:
            return MaskPrediction(pred.masks[:-1], pred.scores[:-1], pred.chosen[:-1], pred.stability[:-1])
        return pred


def test_an_image_that_fails_in_scoring_fails_alone(tmp_path: Path, phantom_dir: Path) -> None:
    run_id, keys, cfg = _setup(tmp_path, phantom_dir, 6, encoder_batch=2, batch_size=6)
    events = Events()
    _install(run_id, BrokenForOne(events, 0.0), SpyStore(tmp_path / "store", events),
             SpyStore(tmp_path / "images", events))  # fmt: skip
    summary = run_batch(run_id, keys)
    assert (summary.done, summary.failed) == (5, 1)
    assert set(summary.failures.values()) == {"segmentation_error"}
    with session_scope(cfg.database_url) as session:
        failed = session.scalars(select(Image).where(Image.status == "failed")).one()
        assert failed.error_reason == "segmentation_error" and failed.key in failed.error
