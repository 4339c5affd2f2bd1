"""P5: the producer at archive scale — keys listed, registered in PostgreSQL and enqueued on Redis, per second.

A manifest of ``--keys`` keys (default one million; an S3 Inventory export or a CSV key column is how archives of
this size are listed in practice) is submitted as a distributed run against the real PostgreSQL and Redis, with
the default batch size, by a separate process whose peak RSS is reported (memory must not grow with the archive).
No worker consumes, so the queue's limit is raised above the run's batch count. The S3 listing rate of the same
code (``S3Store.list``, pages of 1000) is measured on moto's HTTP server for context: moto, not S3, bounds it.

Run: ``python bench/p5_producer.py [--keys 1000000]``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import Measure, env_for, load_average, postgres_db, redis_db, rss_mib, s3_server

KEYS_GOAL = ">=5000"


def child(manifest: str, run: str) -> None:
    """In the measuring subprocess: one ``submit``; prints seconds, peak RSS and the result as JSON."""
    from pixelperfect.config import get_settings
    from pixelperfect.db.migrate import upgrade
    from pixelperfect.producer.enqueue import SubmitRequest, submit

    settings = get_settings()
    upgrade(settings.database_url)  # schema creation is not part of the rate
    before_mib = rss_mib()
    req = SubmitRequest(source="file:///archive", run=run, variants=["raw"], model="grabcut", manifest=manifest)
    t0 = time.perf_counter()
    result = submit(req, settings)
    seconds = time.perf_counter() - t0
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "peak_mib": peak_mib, "before_mib": before_mib, "images": result.images,
                      "batches": result.batches, "new": result.new_images}))  # fmt: skip


def run(n_keys: int = 1_000_000, n_s3: int = 2000) -> list[Measure]:
    import redis

    measures: list[Measure] = []
    with tempfile.TemporaryDirectory(prefix="pp-p5-") as tmp_dir, postgres_db() as pg_url, redis_db() as redis_url:
        manifest = Path(tmp_dir) / "manifest.txt"
        with manifest.open("w") as fh:
            for i in range(n_keys):
                fh.write(f"images/{i // 10000:03d}/{i:08d}.dcm\n")
        batch_size = 32
        env = env_for(broker_url=redis_url, database_url=pg_url, max_queued_batches=str(n_keys), batch_size="32")
        code = f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import p5_producer as p; "
        code += f"p.child({str(manifest)!r}, 'p5')"
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=900)
        if out.returncode != 0:
            raise RuntimeError(f"producer failed:\n{out.stderr[-3000:]}")
        stats = json.loads(out.stdout.strip().splitlines()[-1])
        queued = redis.Redis.from_url(redis_url).llen("gpu")
        expected = -(-n_keys // batch_size)
        if stats["images"] != n_keys or stats["new"] != n_keys or queued != expected:
            raise RuntimeError(f"producer registered/enqueued the wrong amount: {stats}, {queued} messages queued")
        rate = n_keys / stats["seconds"]
        measures.append(Measure(
            "P5", f"producer keys/s listed+registered+enqueued ({n_keys:,} keys, manifest -> PostgreSQL + Redis)",
            rate, "keys/s", goal=KEYS_GOAL,
            details=[f"{stats['seconds']:.1f} s for {n_keys:,} keys ({queued:,} messages of {batch_size} keys); "
                     f"producer RSS {stats['before_mib']:.0f} MiB after imports (the producer imports no "
                     f"model code: no torch), peak {stats['peak_mib']:.0f} MiB; load average {load_average():.2f}"],
        ))  # fmt: skip
    measures.append(_s3_listing(n_s3))
    return measures


def _s3_listing(n: int) -> Measure:
    from pixelperfect.storage import S3Store, make_s3_client

    with s3_server() as endpoint:
        client = make_s3_client(endpoint)
        client.create_bucket(Bucket="pp-p5")
        for i in range(n):
            client.put_object(Bucket="pp-p5", Key=f"archive/{i:08d}.dcm", Body=b"")
        store = S3Store("pp-p5", "archive", endpoint_url=endpoint)
        t0 = time.perf_counter()
        count = sum(1 for _ in store.list())
        seconds = time.perf_counter() - t0
    if count != n:
        raise RuntimeError(f"listed {count} of {n} keys")
    return Measure("P5", f"S3 listing keys/s (moto over HTTP, {n:,} keys, pages of 1000)", n / seconds, "keys/s",
                   details=["moto's server bounds this; AWS S3 serves a page of 1000 keys in ~50-100 ms"])  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    args = parser.parse_args()
    for measure in run(args.keys):
        measure.print()


if __name__ == "__main__":
    main()
