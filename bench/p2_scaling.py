"""P2: horizontal scaling — two worker processes against one, on the real services.

32 phantom PNGs (1024², two boxes each, ``raw``) in moto's S3 over HTTP, masks written back to it, PostgreSQL,
Redis, ``sam_tiny`` at 1024² input; each ``pixelperfect worker`` has one prefork process and one torch thread
(``OMP_NUM_THREADS=1``). Each configuration is warmed up (model loaded in every worker) before it is timed from
the submission to the last image done. On this 2-core machine two workers can at best double the rate; the S3
server, PostgreSQL and Redis share the same two cores.

Run: ``python bench/p2_scaling.py [--images 32]``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from common import (
    Measure,
    Worker,
    env_for,
    load_average,
    postgres_db,
    redis_db,
    s3_server,
    wait_done,
    write_archive,
    write_tiny_checkpoint,
)

RATIO_GOAL = ">=1.7"


def run(n_images: int = 32, batch_size: int = 2) -> list[Measure]:
    from pixelperfect.config import Settings, use_settings
    from pixelperfect.db.migrate import upgrade
    from pixelperfect.producer.enqueue import SubmitRequest, submit
    from pixelperfect.storage import make_s3_client

    rates: dict[int, float] = {}
    with tempfile.TemporaryDirectory(prefix="pp-p2-") as tmp_dir, s3_server() as endpoint, postgres_db() as pg_url, \
            redis_db() as redis_url:  # fmt: skip
        tmp = Path(tmp_dir)
        images, labels = write_archive(tmp / "archive", n_images, 1024)
        checkpoint = write_tiny_checkpoint(tmp / "tiny1024.pth", 1024)
        client = make_s3_client(endpoint)
        client.create_bucket(Bucket="pp-p2")
        for path in sorted(images.iterdir()):
            client.put_object(Bucket="pp-p2", Key=f"images/{path.name}", Body=path.read_bytes())
        client.put_object(Bucket="pp-p2", Key="labels.csv", Body=labels.read_bytes())
        client.put_object(Bucket="pp-p2", Key="tiny.pth", Body=checkpoint.read_bytes())
        values = dict(broker_url=redis_url, database_url=pg_url, store_url="s3://pp-p2/results",
                      s3_endpoint_url=endpoint, device="cpu", model="sam_tiny", encoder_batch="1")  # fmt: skip
        settings = Settings(**values)  # type: ignore[arg-type]
        use_settings(settings)
        upgrade(pg_url)
        env = env_for(**values) | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

        def submit_run(name: str, source: str, batch: int) -> tuple[int, int]:
            req = SubmitRequest(source=source, run=name, variants=["raw"], model="sam_tiny",
                                checkpoint="s3://pp-p2/tiny.pth", annotations="s3://pp-p2/labels.csv",
                                batch_size=batch)  # fmt: skip
            result = submit(req, settings)
            return result.run_id, result.images

        for name in ("phantom-00000.png", "phantom-00001.png"):  # a warm-up run: one image per worker
            client.put_object(Bucket="pp-p2", Key=f"warm/{name}", Body=(images / name).read_bytes())
        for n_workers in (1, 2):
            workers = [Worker(env, tmp / f"w{n_workers}-{i}.log", f"p2w{i}@%h") for i in range(n_workers)]
            try:
                for worker in workers:
                    worker.wait_ready()
                warm_id, warm_n = submit_run(f"warm{n_workers}", "s3://pp-p2/warm", 1)  # one batch per worker
                wait_done(pg_url, warm_id, warm_n)
                run_id, total = submit_run(f"scale{n_workers}", "s3://pp-p2/images", batch_size)
                seconds = wait_done(pg_url, run_id, total)
                rates[n_workers] = total / seconds
            finally:
                for worker in workers:
                    worker.stop()
        use_settings(None)
    ratio = rates[2] / rates[1]
    return [Measure(
        "P2", f"images/s two workers / one worker ({n_images} images, S3 + PostgreSQL + Redis)", ratio,
        goal=RATIO_GOAL,
        details=[f"1 worker {rates[1]:.2f} images/s, 2 workers {rates[2]:.2f} images/s (sam_tiny 1024², 1 torch "
                 f"thread each, batches of {batch_size}); load average {load_average():.2f}"],
    )]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32)
    args = parser.parse_args()
    for measure in run(args.images):
        measure.print()


if __name__ == "__main__":
    main()
