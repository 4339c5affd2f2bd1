"""``delete`` against the S3 server: two runs over the same image keys, one deleted (its rows, its masks and SEG
objects, more than one DeleteObjects request of them), the other untouched; a busy run is refused; an interrupted
delete is finished by the next."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import func, select

from pixelperfect.config import Settings
from pixelperfect.db import bulk, control, repo, segs
from pixelperfect.db.migrate import upgrade
from pixelperfect.db.models import Annotation, Image, ModelWork, Run, Segment
from pixelperfect.db.session import session_scope
from pixelperfect.producer.lifecycle import RunBusyError, cancel, delete
from pixelperfect.storage import S3Store
from tests.conftest import S3Server
from tests.db.test_repo import RUN_FIELDS

pytestmark = pytest.mark.integration

KEYS = [f"scan/{i:04d}.png" for i in range(550)]  # two masks each: 1,100 objects, two DeleteObjects requests


def _populate(url: str, store: S3Store, name: str, keys: list[str]) -> int:
    with session_scope(url) as s:
        run = repo.create_run(s, name=name, fields={**RUN_FIELDS, "store_url": store.url})
        bulk.register_images(s, run_id=run.id, keys=keys)
        repo.add_annotations(s, run_id=run.id, boxes={k: [[1, 2, 3, 4]] for k in keys})
        rows = repo.images_by_key(s, run_id=run.id, keys=keys)
        control.record_model_work(s, run_id=run.id, image_ids=[r.id for r in rows.values()], worker="w")
        objects = []
        for key, image in rows.items():
            segs = []
            for variant in ("raw", "clahe"):
                mask = f"{name}/masks/{key}/{variant}/0.png"
                objects.append(mask)
                segs.append({"run_id": run.id, "image_id": image.id, "variant": variant, "prompt_index": 0,
                             "prompt": [1, 2, 3, 4], "mask_key": store.url_for(mask)})  # fmt: skip
            repo.mark_done(s, image_id=image.id, segments=segs, fields={})
        run_id = run.id
    objects.append(f"{name}/seg/{keys[0]}.dcm")
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: store.put(k, b"\x89PNG" + k.encode()), objects))
    return run_id


def _count(url: str, run_id: int) -> dict[str, int]:
    with session_scope(url) as s:
        return {
            m.__tablename__: int(s.scalar(select(func.count()).select_from(m).where(m.run_id == run_id)) or 0)
            for m in (Image, Segment, Annotation, ModelWork)
        } | {"runs": int(s.scalar(select(func.count()).select_from(Run).where(Run.id == run_id)) or 0)}


def test_delete_removes_one_run_of_two_sharing_image_keys(
    s3_server: S3Server, s3_bucket: str, pg_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    settings = Settings(database_url=pg_url, store_url=f"s3://{s3_bucket}/results", s3_endpoint_url=s3_server.endpoint)
    upgrade(pg_url)
    store = S3Store(s3_bucket, "results", endpoint_url=s3_server.endpoint)
    doomed = _populate(pg_url, store, "doomed", KEYS)
    kept = _populate(pg_url, store, "kept", KEYS[:40])  # the same image keys, another run
    kept_before = _count(pg_url, kept)
    kept_objects = sorted(store.list("kept/"))
    assert len(kept_objects) == 81 and len(list(store.list("doomed/"))) == 1101

    with session_scope(pg_url) as s:  # one image still queued, one of them in a worker's batch
        image = repo.images_by_key(s, run_id=doomed, keys=KEYS[:2])
        s.execute(Image.__table__.update().where(Image.id.in_([i.id for i in image.values()])).values(status="queued"))
        control.claim(s, run_id=doomed, keys=KEYS[:1], owner="task-1", worker="w", ttl_s=600)
    with pytest.raises(RunBusyError, match="2 queued images: `pixelperfect cancel doomed` first"):
        delete("doomed", settings)
    assert cancel("doomed", settings).cancelled == 1
    with pytest.raises(RunBusyError, match="1 images in a worker's batch"):
        delete("doomed", settings)
    with session_scope(pg_url) as s:
        control.release(s, run_id=doomed, owner="task-1", keys=KEYS[:1])
    with pytest.raises(LookupError, match="did you mean doomed"):
        delete("doome", settings)

    calls = {"n": 0}
    real = S3Store.delete_many

    def interrupted(self: S3Store, keys: list[str]) -> int:
        calls["n"] += 1
        if calls["n"] == 2:
            raise ConnectionError("interrupted")
        return real(self, keys)

    monkeypatch.setattr(S3Store, "delete_many", interrupted)
    with pytest.raises(ConnectionError):
        delete("doomed", settings)
    with session_scope(pg_url) as s:
        assert control.run_state(s, run_id=doomed) == "deleting"
    monkeypatch.setattr(S3Store, "delete_many", real)
    result = delete("doomed", settings)  # the next call finishes it
    assert result.objects == 1101 - 1000
    assert list(store.list("doomed/")) == []
    assert _count(pg_url, doomed) == {"images": 0, "segments": 0, "annotations": 0, "model_work": 0, "runs": 0}
    assert _count(pg_url, kept) == kept_before and sorted(store.list("kept/")) == kept_objects

    full = _populate(pg_url, store, "timed", KEYS)
    with session_scope(pg_url) as s:  # three SEGs: two accepted by the PACS (listed on delete), one refused
        ids = repo.images_by_key(s, run_id=full, keys=KEYS[:2])
        rows = [{"image_id": ids[KEYS[i]].id, "variant": v, "object_key": f"seg-{i}-{v}", "sop_instance_uid": uid,
                 "stow_status": status} for i, v, uid, status in [(0, "raw", "1.2.3", "stored"),
                 (1, "raw", "1.2.4", "stored"), (1, "clahe", "1.2.5", "failed")]]  # fmt: skip
        segs.upsert_segs(s, run_id=full, rows=rows)
    with session_scope(pg_url) as s:
        assert control.run_state(s, run_id=full) == "active"
    listed = tmp_path / "stowed.csv"
    timed = delete("timed", settings, stowed_list=listed)
    assert (timed.stowed, timed.stowed_list) == (2, str(listed))
    assert listed.read_text().splitlines() == [
        "image_key,variant,sop_instance_uid,stow_to",
        f"{KEYS[0]},raw,1.2.3,",
        f"{KEYS[1]},raw,1.2.4,",
    ]
    assert timed.objects == 1101 and timed.rows == 550 * 2 + 550 + 550 + 550 + 1
    print(f"delete: {timed.objects} objects in {timed.object_seconds:.2f}s = {timed.objects_per_s:.0f} objects/s")
