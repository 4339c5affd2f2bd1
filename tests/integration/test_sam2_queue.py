"""SAM 2 through the queue: a SAM 2.1-family run with box, point and automatic prompts on two real ``pixelperfect
worker`` processes (Redis, PostgreSQL) writes masks, rows and DICOM-SEGs, and the report pairs it with a SAM v1 run
of the same images. The model is ``sam2_tiny`` (SAM 2.1's architecture at 128², seeded weights saved as a Hugging
Face directory): the same code path as hiera-tiny, at a size a CPU runs in seconds."""

from __future__ import annotations

import csv
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, func, select

from pixelperfect.db.models import Image, Run, Segment, SegObject
from tests.conftest import PIXELPERFECT, ROOT, service_env
from tests.orthanc import dicom_phantoms

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PIXELPERFECT, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)


def settled(env: dict[str, str], run: str, timeout: float = 300) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        out = cli(env, "status", run, "--json")
        assert out.returncode == 0, out.stderr
        status = json.loads(out.stdout)
        if status["images"]["queued"] == 0:
            return status
        time.sleep(1)
    raise TimeoutError(f"run {run} not settled: {status}")


def test_a_sam2_run_with_box_point_and_auto_prompts_on_two_workers_beside_sam_v1(
    tmp_path: Path, redis_url: str, pg_url: str, start_worker: Any
) -> None:
    import torch  # noqa: F401  (the test process builds the checkpoint; workers load it)

    from pixelperfect.pipeline.model.sam2 import seeded_sam2

    archive = tmp_path / "archive"
    dicom_phantoms(archive, 4, seed=25, size=192)
    checkpoint = tmp_path / "sam2_tiny_hf"
    seeded_sam2("sam2_tiny", 7).save_pretrained(checkpoint)
    boxes = [row for row in csv.DictReader((archive / "labels.csv").open()) if row["Target"] == "1"]
    with (archive / "points.csv").open("w") as f:
        f.write("key,x,y,label\n")
        for row in boxes:
            x, y, w, h = (float(row[k]) for k in ("x", "y", "width", "height"))
            f.write(f"{row['patientId']},{x + w / 2:.1f},{y + h / 2:.1f},1\n")

    env = service_env(broker_url=redis_url, database_url=pg_url, store_url=f"file://{tmp_path / 'store'}",
                      device="cpu", retry_backoff_s="0")  # fmt: skip
    assert cli(env, "db", "upgrade").returncode == 0
    start_worker(env, hostname="a@%h", wait=False)
    start_worker(env, hostname="b@%h").wait_ready()

    images = str(archive / "images")
    common = ["--variant", "raw", "--batch-size", "1"]
    sam2 = ["--model", "sam2_tiny", "--checkpoint", str(checkpoint)]
    truth = ["--annotations", str(archive / "labels.csv"), "--gt-masks", str(archive / "masks")]
    runs = {
        "s2-box": [*sam2, *truth, "--output", "png,dicom-seg"],
        "s2-point": [*sam2, "--prompts", "points", "--points", str(archive / "points.csv")],
        "s2-auto": [
            *sam2,
            "--prompts",
            "auto",
            "--points-per-side",
            "4",
            "--no-lung-only",
            "--auto-min-score",
            "0",
            "--auto-min-stability",
            "0",
        ],
        "v1-box": ["--model", "sam_tiny", *truth],
    }
    for name, args in runs.items():
        out = cli(env, "submit", images, "--run", name, *args, *common)
        assert out.returncode == 0, out.stderr + out.stdout
    for name in runs:
        status = settled(env, name)
        assert status["images"]["failed"] == 0 and status["images"]["done"] == 4, (name, status)

    engine = create_engine(pg_url)
    deadline = time.monotonic() + 180  # the seg queue builds the box run's SEGs after its batches persisted
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            run_id = conn.scalar(select(Run.id).where(Run.name == "s2-box"))
            built = conn.scalar(select(func.count()).select_from(SegObject).where(SegObject.run_id == run_id))
            with_segments = conn.scalar(
                select(func.count()).select_from(Image).where(Image.run_id == run_id, Image.n_segments > 0)
            )
        if built >= with_segments:
            break
        time.sleep(1)
    with engine.connect() as conn:
        ids = dict(conn.execute(select(Run.name, Run.id)).all())
        sha = conn.scalar(select(Run.checkpoint_sha256).where(Run.name == "s2-box"))
        hosts = set(conn.scalars(select(Image.worker_host).where(Image.run_id.in_([ids["s2-box"], ids["s2-point"]]))))
        count = {
            name: conn.scalar(select(func.count()).select_from(Segment).where(Segment.run_id == ids[name]))
            for name in runs
        }
        kinds = {
            name: set(conn.scalars(select(Segment.prompt_kind).where(Segment.run_id == ids[name]))) for name in runs
        }
        keys = list(conn.scalars(select(Segment.mask_key).where(Segment.run_id == ids["s2-box"])))
        scores = list(conn.scalars(select(Segment.scores).where(Segment.run_id == ids["s2-box"])))
        segs = list(conn.scalars(select(SegObject.object_key).where(SegObject.run_id == ids["s2-box"])))
    engine.dispose()
    assert sha and len(sha) == 64
    assert len(hosts) == 2, hosts  # both workers segmented SAM 2 images
    assert count["s2-box"] == count["v1-box"] == len(boxes) and count["s2-point"] == len(boxes)
    assert count["s2-auto"] > 0
    assert kinds == {"s2-box": {"box"}, "s2-point": {"point"}, "s2-auto": {"auto"}, "v1-box": {"box"}}
    assert all(len(s) == 3 and all(v is not None for v in s) for s in scores)  # three candidates per prompt
    assert all(Path(k.removeprefix("file://")).is_file() for k in keys)
    assert segs and all(k and k.endswith(".dcm") for k in segs)  # the seg queue built them from SAM 2's masks

    out = cli(env, "report", "v1-box", "s2-box", "--out", str(tmp_path / "report"), "--format", "json")
    assert out.returncode == 0, out.stderr
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert [r["model"] for r in report["runs"]] == ["sam_tiny", "sam2_tiny"]
    across = [c for c in report["comparisons"] if c["kind"] == "run"]
    assert {c["a"]["run"] for c in across} == {"v1-box"} and {c["b"]["run"] for c in across} == {"s2-box"}
    dice = next(c for c in across if c["metric"] == "dice")
    assert dice["n"] == len(boxes)  # every box paired across the two families, Dice against the same truth
    assert {c["metric"] for c in across} >= {"score", "consistency_std", "dice"}
