"""P15: steering a run at archive scale (issue 15).

* **cancel**: seconds for ``pixelperfect cancel`` (``producer.control.cancel``) of a run with 100,000 queued,
  published images on PostgreSQL, a few of them under a live lease (they stay queued: their batch finishes);
* **delete**: objects/s of ``pixelperfect delete`` (``producer.control.delete``) removing a run's mask objects from
  moto's S3 server over HTTP (``DeleteObjects``, 1,000 keys per request), with its rows.

Run: ``python bench/p15_control.py [--images 100000] [--objects 5000]``.
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor

from common import Measure, load_average, postgres_db, s3_server

CANCEL_GOAL = "<=5"
DELETE_GOAL = ">=1000"
RUN_FIELDS = {"source_url": "file:///src", "model": "sam_tiny", "checkpoint": None, "checkpoint_sha256": None,
              "variants": [{"name": "raw", "spec": "identity", "hash": "x"}], "prompt_mode": "boxes", "settings": {},
              "code_version": "bench", "config_hash": "h"}  # fmt: skip


def cancel_seconds(url: str, n: int) -> tuple[float, int, int]:
    from pixelperfect.config import Settings
    from pixelperfect.db import bulk, control, repo
    from pixelperfect.db.migrate import upgrade
    from pixelperfect.db.session import session_scope
    from pixelperfect.producer.lifecycle import cancel

    upgrade(url)
    keys = [f"archive/{i:08d}.dcm" for i in range(n)]
    with session_scope(url) as s:
        run_id = repo.create_run(s, name="big", fields={**RUN_FIELDS, "store_url": "file:///out"}).id
    for start in range(0, n, 10_000):
        with session_scope(url) as s:
            bulk.register_images(s, run_id=run_id, keys=keys[start : start + 10_000])
            control.mark_published(s, run_id=run_id, keys=keys[start : start + 10_000])
    with session_scope(url) as s:
        control.claim(s, run_id=run_id, keys=keys[:16], owner="task-1", worker="bench", ttl_s=600)
    t0 = time.perf_counter()
    result = cancel("big", Settings(database_url=url))
    return time.perf_counter() - t0, result.cancelled, result.in_flight


def delete_rate(url: str, endpoint: str, n_objects: int) -> tuple[float, int, float]:
    from pixelperfect.config import Settings
    from pixelperfect.db import bulk, repo
    from pixelperfect.db.migrate import upgrade
    from pixelperfect.db.session import session_scope
    from pixelperfect.producer.lifecycle import delete
    from pixelperfect.storage import S3Store, make_s3_client

    upgrade(url)

    make_s3_client(endpoint).create_bucket(Bucket="results")
    store = S3Store("results", "pp", endpoint_url=endpoint)
    keys = [f"scan/{i:06d}.png" for i in range(n_objects)]
    with session_scope(url) as s:
        run_id = repo.create_run(s, name="gone", fields={**RUN_FIELDS, "store_url": store.url}).id
        bulk.register_images(s, run_id=run_id, keys=keys)
        rows = repo.images_by_key(s, run_id=run_id, keys=keys)
        for key, image in rows.items():
            seg = {"run_id": run_id, "image_id": image.id, "variant": "raw", "prompt_index": 0, "prompt": [0, 0, 1, 1],
                   "mask_key": store.url_for(f"gone/masks/{key}/raw/0.png")}  # fmt: skip
            repo.mark_done(s, image_id=image.id, segments=[seg], fields={})
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: store.put(f"gone/masks/{k}/raw/0.png", b"mask"), keys))
    result = delete("gone", Settings(database_url=url, s3_endpoint_url=endpoint))
    if result.objects != n_objects or list(store.list("gone/")):
        raise RuntimeError(f"delete left objects behind: {result}")
    return result.objects_per_s, result.objects, result.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--objects", type=int, default=5_000)
    args = parser.parse_args()
    with postgres_db() as url:
        seconds, cancelled, in_flight = cancel_seconds(url, args.images)
    Measure("P15", f"cancel a run of {args.images:,} queued images (PostgreSQL)", seconds, "s", goal=CANCEL_GOAL,
            details=[f"{cancelled:,} cancelled in one UPDATE, {in_flight} under a live lease left to finish; "
                     f"load average {load_average():.2f}"]).print()  # fmt: skip
    with postgres_db() as url, s3_server() as endpoint:
        rate, objects, total_s = delete_rate(url, endpoint, args.objects)
    details = [f"{objects:,} objects and their rows in {total_s:.1f}s in all"]
    what = "delete a run's mask objects (moto S3 over HTTP, DeleteObjects x1000)"
    Measure("P15", what, rate, "objects/s", goal=DELETE_GOAL, details=details).print()


if __name__ == "__main__":
    main()
