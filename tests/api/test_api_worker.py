"""The notebook API on PostgreSQL with a real broker and a real ``pixelperfect worker`` process: ``pp.submit``
with ``wait=False`` returns once the run is published, ``Run.wait`` follows it, reads during the run return what
is committed, and the DataFrames and comparison equal the report's on PostgreSQL's bulk path."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import pixelperfect as pp
from pixelperfect.config import Settings
from pixelperfect.evaluation.build import build_report
from tests.conftest import service_env

pytestmark = pytest.mark.integration


def test_submit_to_a_worker_then_read_on_postgresql(
    tmp_path: Path, phantom_dir: Path, pg_url: str, redis_url: str, start_worker: Any
) -> None:
    store = f"file://{tmp_path / 'store'}"
    start_worker(service_env(broker_url=redis_url, database_url=pg_url, store_url=store, device="cpu"))
    urls = {"database_url": pg_url, "store_url": store, "broker_url": redis_url}
    run = pp.submit(str(phantom_dir / "images"), "pg-api", model="grabcut", variants=["raw", "clahe"],
                    annotations=str(phantom_dir / "labels.csv"), gt_masks=str(phantom_dir / "masks"),
                    batch_size=4, wait=False, **urls)  # fmt: skip
    assert isinstance(run, pp.Run)
    seen = []  # segments read while the worker writes: only what is committed, never a partial image
    deadline = time.monotonic() + 180
    while run.status()["images"]["queued"] and time.monotonic() < deadline:
        df = run.segments(columns=["key", "variant", "prompt_index", "dice"])
        done = set(run.images(status="done").key)
        assert set(df.key.astype(str)) <= done
        seen.append(len(df))
        time.sleep(0.2)
    run.wait(progress=False, timeout=60)
    assert seen == sorted(seen)  # what is committed only grows
    status = run.status()["images"]
    assert status["done"] == 12 and status["queued"] == 0

    df = run.segments()
    assert len(df) > 0 and df.dice.dtype == np.float32 and str(df.key.dtype) == "category"
    assert list(df.key.astype(str)) == sorted(df.key.astype(str)) or set(df.variant) == {"raw", "clahe"}
    settings = Settings(database_url=pg_url, store_url=store)
    report = json.loads(build_report(["pg-api"], tmp_path / "r", settings=settings, fmt="json").read_text())
    variants = {v["variant"]: v for v in report["runs"][0]["variants"]}
    for name, group in df.groupby("variant", observed=True):
        assert len(group) == variants[name]["n_segments"]
        # float32 mean of float32 values against the float64 SQL mean: agree to float32 rounding
        assert float(group.dice.astype(np.float64).mean()) == pytest.approx(variants[name]["dice_mean"], rel=1e-6)
    table = pp.compare(("pg-api", "raw"), ("pg-api", "clahe"), database_url=pg_url)
    expected = [c for c in report["comparisons"] if c["kind"] == "variant"]
    assert list(table.metric) == [c["metric"] for c in expected]
    assert list(table.mean_diff) == pytest.approx([c["mean_diff"] for c in expected], rel=1e-12)
    key = str(df.key.iloc[0])
    assert run.mask(key, "raw").shape == (256, 256)
    assert pp.runs(database_url=pg_url).run.tolist() == ["pg-api"]


def test_cancel_through_the_api(tmp_path: Path, phantom_dir: Path, pg_url: str, redis_url: str) -> None:
    """No worker: ``wait=False`` returns once published; ``Run.cancel`` cancels every queued image."""
    import redis

    run = pp.submit(str(phantom_dir / "images"), "pg-cancel", model="grabcut", wait=False, database_url=pg_url,
                    store_url=f"file://{tmp_path / 'store'}", broker_url=redis_url)  # fmt: skip
    try:
        assert run.status()["images"]["queued"] == 12
        assert run.cancel().cancelled == 12
        assert run.status()["images"]["cancelled"] == 12
        assert run.wait(progress=False, timeout=0.0) is run  # nothing queued: returns at once
    finally:
        redis.Redis.from_url(redis_url).delete("gpu")  # no later worker of this session gets these messages
