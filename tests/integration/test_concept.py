"""A concept run (SAM 3, random tiny weights) over DICOM phantoms through the queue: Redis, PostgreSQL, a real
`pixelperfect worker` process; boxes for half of the films. Instance masks, rows, SEGs and the report."""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import create_engine, select

from pixelperfect.db.models import Image, Run, Segment, SegObject
from pixelperfect.synthetic.phantoms import write_phantoms
from tests.conftest import PIXELPERFECT, ROOT, service_env
from tests.sam3_tiny import write_tiny_dir

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def cli(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PIXELPERFECT, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_concept_run_through_the_queue(tmp_path: Path, redis_url: str, pg_url: str, start_worker) -> None:  # type: ignore[no-untyped-def]
    write_phantoms(tmp_path / "ph", 6, seed=3, size=128, fmt="dicom")
    rows = list(csv.DictReader((tmp_path / "ph" / "labels.csv").open()))
    labelled = sorted({r["patientId"] for r in rows})[:3]  # boxes (or a labelled negative) for half the films
    with (tmp_path / "half.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(r for r in rows if r["patientId"] in labelled)
    model = write_tiny_dir(tmp_path / "sam3")
    env = service_env(broker_url=redis_url, database_url=pg_url, store_url=f"file://{tmp_path / 'store'}",
                      device="cpu")  # fmt: skip
    assert cli(env, "db", "upgrade").returncode == 0
    start_worker(env)
    out = cli(
        env, "submit", str(tmp_path / "ph" / "images"), "--run", "concept", "--model", "sam3", "--checkpoint",
        str(model), "--prompts", "concept", "--concept", "lung opacity", "--concept", "consolidation",
        "--concept-variants", "lung opacity=opacity", "--concept-threshold", "0.25", "--consistency-k", "1",
        "--annotations", str(tmp_path / "half.csv"), "--variant", "raw", "--batch-size", "4",
        "--output", "png,dicom-seg", "--wait",
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr

    engine = create_engine(pg_url)
    with engine.connect() as conn:
        run = conn.execute(select(Run.id, Run.prompt_mode, Run.settings)).one()
        assert run.prompt_mode == "concept" and run.settings["concept"]["synonyms"] == [["opacity"], []]
        images = conn.execute(select(Image.id, Image.status, Image.n_segments, Image.error)).all()
        assert len(images) == 6 and {i.status for i in images} == {"done"}, images
        segs = conn.execute(select(Segment.image_id, Segment.prompt_kind, Segment.prompt, Segment.score,
                                   Segment.consistency_std, Segment.consistency_iou_base, Segment.perturbations,
                                   Segment.mask_key)).all()  # fmt: skip
        seg_objects = {s.image_id: s for s in conn.execute(select(SegObject)).all()}
    assert segs and sum(i.n_segments for i in images) == len(segs)
    for s in segs:
        assert s.prompt_kind == "concept" and s.prompt["concept"] in ("lung opacity", "consolidation")
        assert len(s.prompt["box"]) == 4 and s.score > 0.25
        assert len(s.perturbations) == 1 + (s.prompt["concept"] == "lung opacity")  # K films + the synonym
        assert s.consistency_std is not None and 0.0 <= s.consistency_iou_base <= 1.0
        assert Path(s.mask_key.removeprefix("file://")).is_file()
    for image in images:  # one SEG per image with instances, one segment per instance
        if image.n_segments:
            seg = seg_objects[image.id]
            assert seg.seg_error is None and seg.segments == image.n_segments
            dataset = pydicom.dcmread(seg.object_key.removeprefix("file://"))
            assert len(dataset.SegmentSequence) == image.n_segments

    coco = cli(env, "export", "concept", "--format", "coco", "--out", str(tmp_path / "coco.json"))
    assert coco.returncode == 0, coco.stderr
    exported = json.loads((tmp_path / "coco.json").read_text())
    assert [c["name"] for c in exported["categories"]] == ["lung opacity", "consolidation"]
    by_phrase = {p: sum(s.prompt["concept"] == p for s in segs) for p in ("lung opacity", "consolidation")}
    assert [sum(a["category_id"] == i for a in exported["annotations"]) for i in (1, 2)] == list(by_phrase.values())

    report = cli(env, "report", "concept", "--out", str(tmp_path / "report"), "--format", "json")
    assert report.returncode == 0, report.stderr
    data = json.loads((tmp_path / "report" / "report.json").read_text())
    (detection,) = data["detection"]
    assert detection["measure"] == "rsna_challenge" and detection["labelled"] == 3
    assert len(detection["sweep"]) == 19 and "score_threshold" in detection
    assert detection["images"] >= 1 and detection["rsna_score"] is not None
    html = cli(env, "report", "concept", "--out", str(tmp_path / "html"))  # the gallery draws the model's boxes
    assert html.returncode == 0, html.stderr
    assert "chosen threshold" in (tmp_path / "html" / "report.html").read_text()
    ((variant,),) = [r["variants"] for r in data["runs"] if r["run"] == "concept"]
    assert variant["n_segments"] == len(segs) and variant["consistency_std_mean"] is not None
