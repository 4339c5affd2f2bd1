"""P7: worker memory stays flat — RSS drift of a real worker's pool process over 1,000 images.

One ``pixelperfect worker`` (prefork, one pool process, one torch thread) on Redis and PostgreSQL, images and masks
in a file:// store, ``sam_tiny`` (256² input) on small phantom PNGs (128², two boxes each, K = 4). The pool
process's RSS is read from /proc after the first ``--warm`` images (allocator pools, caches and the model are in
place by then) and again after the last; the drift is their relative difference.

Run: ``python bench/p7_rss.py [--images 1000]``.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import tempfile
import time
from pathlib import Path

from common import (
    Measure,
    Worker,
    env_for,
    load_average,
    postgres_db,
    redis_db,
    rss_mib,
    two_boxes,
    write_tiny_checkpoint,
)

DRIFT_GOAL = "<=5"


def run(n_images: int = 1000, warm: int = 100, size: int = 128) -> list[Measure]:
    from pixelperfect.config import Settings, use_settings
    from pixelperfect.db import repo
    from pixelperfect.db.migrate import upgrade
    from pixelperfect.db.session import session_scope
    from pixelperfect.embedded import SubmitRequest, submit
    from pixelperfect.synthetic.phantoms import write_phantoms

    with tempfile.TemporaryDirectory(prefix="pp-p7-") as tmp_dir, postgres_db() as pg_url, redis_db() as redis_url:
        tmp = Path(tmp_dir)
        write_phantoms(tmp / "src", 40, seed=21, size=size)
        images = tmp / "images"
        images.mkdir()
        sources = sorted((tmp / "src" / "images").iterdir())
        with (tmp / "labels.csv").open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["patientId", "x", "y", "width", "height", "Target"])
            for i in range(n_images):  # 40 distinct phantoms under 1,000 keys
                shutil.copyfile(sources[i % len(sources)], images / f"img-{i:05d}.png")
                for x1, y1, x2, y2 in two_boxes(i, size):
                    writer.writerow([f"img-{i:05d}", x1, y1, x2 - x1, y2 - y1, 1])
        checkpoint = write_tiny_checkpoint(tmp / "tiny.pth", 256)
        values = dict(broker_url=redis_url, database_url=pg_url, store_url=f"file://{tmp / 'store'}", device="cpu",
                      model="sam_tiny")  # fmt: skip
        settings = Settings(**values)  # type: ignore[arg-type]
        use_settings(settings)
        upgrade(pg_url)
        worker = Worker(env_for(**values) | {"OMP_NUM_THREADS": "1"}, tmp / "worker.log", "p7@%h")
        try:
            worker.wait_ready()
            req = SubmitRequest(source=str(images), run="rss", variants=["raw"], model="sam_tiny",
                                checkpoint=str(checkpoint), annotations=str(tmp / "labels.csv"))  # fmt: skip
            t0 = time.perf_counter()
            result = submit(req, settings)
            samples: list[tuple[int, float]] = []
            while True:
                with session_scope(pg_url) as session:
                    counts = repo.status_counts(session, run_id=result.run_id)
                finished = counts["done"] + counts["failed"]
                pids = worker.pool_pids()
                if pids:
                    samples.append((finished, rss_mib(pids[0])))
                if finished >= n_images:
                    break
                if time.perf_counter() - t0 > 600:
                    raise TimeoutError(f"{finished} of {n_images} images after 600 s")
                time.sleep(0.5)
            seconds = time.perf_counter() - t0
            if counts["failed"]:
                raise RuntimeError(f"{counts['failed']} images failed")
            pool_pid = worker.pool_pids()[0]
            end = rss_mib(pool_pid)
        finally:
            worker.stop()
            use_settings(None)
    start = next(rss for done, rss in samples if done >= warm)
    drift = 100 * (end - start) / start
    peak = max(rss for _, rss in samples)
    return [Measure(
        "P7", f"worker RSS drift over {n_images:,} images (after {warm} warm-up images)", drift, "%", goal=DRIFT_GOAL,
        details=[f"pool process RSS {start:.0f} MiB after {warm} images, {end:.0f} MiB after {n_images}, peak "
                 f"{peak:.0f} MiB; {n_images / seconds:.1f} images/s; load average {load_average():.2f}"],
    )]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    args = parser.parse_args()
    for measure in run(args.images):
        measure.print()


if __name__ == "__main__":
    main()
