"""Archive in, archive out, on the real parts: phantom DICOMs STOWed into Orthanc, a run over DICOMweb with two
`pixelperfect worker` processes (Redis, PostgreSQL), DICOM-SEGs written and STOWed back, then checked: QIDO-RS
finds one SEG per image and variant, each equals the PNG masks and passes dciodvfy, the COCO export decodes to the
same masks, and no patient identifier reached SQL, logs, task messages, exports or the report."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import create_engine, text

from tests.conftest import service_env
from tests.integration.test_distributed import cli, wait_for_run
from tests.orthanc import PHI, DimseArchive, Orthanc, archive_files, dicom_phantoms

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _mask(path: str) -> np.ndarray:
    import cv2

    return np.asarray(cv2.imread(path.removeprefix("file://"), cv2.IMREAD_GRAYSCALE) > 0)


def test_dicomweb_run_writes_seg_and_coco_without_phi(
    tmp_path: Path,
    empty_orthanc: Orthanc,
    redis_url: str,
    pg_url: str,
    tiny_checkpoint: Path,
    start_worker,  # type: ignore[no-untyped-def]
) -> None:
    import pydicom
    from pycocotools import mask as mask_util

    orthanc = empty_orthanc  # the run lists the whole PACS

    paths = dicom_phantoms(tmp_path / "archive", 4, seed=45, phi=True)
    orthanc.stow_files(paths)
    studies = {str(pydicom.dcmread(p).StudyInstanceUID) for p in paths}
    store = tmp_path / "store"
    env = service_env(broker_url=redis_url, database_url=pg_url, store_url=f"file://{store}", device="cpu")
    assert cli(env, "db", "upgrade").returncode == 0
    start_worker(env, hostname="w1@%h", extra=["--queues", "gpu,seg"])  # batches, and the SEGs on queue seg
    start_worker(env, hostname="w2@%h", extra=["--queues", "gpu,seg"])
    assert orthanc.studies_before == set()  # the PACS holds this test's studies only (fixture cleans up)
    out = cli(
        env, "submit", orthanc.url, "--run", "pacs", "--model", "sam_tiny", "--checkpoint", str(tiny_checkpoint),
        "--filter", "Modality=CR,DX", "--annotations", str(tmp_path / "archive" / "labels_pid.csv"),
        "--variant", "raw", "--variant", "clahe", "--batch-size", "2", "--output", "png,dicom-seg",
        "--stow-to", orthanc.url,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr + out.stdout
    status = wait_for_run(env, "pacs")
    assert status["images"]["done"] == 4, status

    engine = create_engine(pg_url)
    _wait_for_segs(engine)  # queue seg builds them after the images are done
    with engine.connect() as conn:
        masks: dict[tuple[str, str], list[str]] = {}
        for key, variant, mask_key in conn.execute(text(
            "select i.key, s.variant, s.mask_key from segments s join images i on i.id = s.image_id "
            "order by i.key, s.variant, s.prompt_index"
        )):  # fmt: skip
            masks.setdefault((key, variant), []).append(mask_key)
        query = (
            "select i.key, o.variant, o.object_key, o.sop_instance_uid, o.seg_error, o.stow_status "
            "from seg_objects o join images i on i.id = o.image_id"
        )
        segs = conn.execute(text(query)).all()
        workers = {r[0] for r in conn.execute(text("select distinct worker_host from images"))}
    engine.dispose()
    assert masks and len(segs) == len(masks)  # one SEG per image and variant with segments
    assert all(err is None and stow == "stored" for *_, err, stow in segs)
    assert len(workers) == 2, workers  # both workers took part

    # QIDO-RS finds exactly one SEG per image and variant, back in the PACS
    from pixelperfect.storage.dicomweb import DicomwebStore

    pacs = DicomwebStore(orthanc.url)
    found = [i for i in pacs.instances({"Modality": ["SEG"]}) if i.key.split("/")[0] in studies]
    assert sorted(i.key.rsplit("/", 1)[1] for i in found) == sorted(str(s[3]) for s in segs)
    for key, variant, url, sop, _, _ in segs:
        retrieved = pydicom.dcmread(io.BytesIO(pacs.get(next(i.key for i in found if i.key.endswith(sop)))))
        ref = retrieved.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID
        assert ref == key.rsplit("/", 1)[1]
        assert retrieved.SegmentSequence[0].SegmentAlgorithmType == "AUTOMATIC"
        assert "sam_tiny" in retrieved.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0].AlgorithmName
        frames = retrieved.pixel_array.reshape(len(masks[(key, variant)]), int(retrieved.Rows), int(retrieved.Columns))
        for frame, png in zip(frames, masks[(key, variant)], strict=True):
            assert np.array_equal(frame > 0, _mask(png))
        local = url.removeprefix("file://")
        check = subprocess.run(["dciodvfy", local], capture_output=True, text=True, timeout=60)
        errors = [line for line in (check.stdout + check.stderr).splitlines() if line.startswith("Error")]
        assert not errors, errors

    # COCO export decodes to the same masks
    coco_path = tmp_path / "pacs.json"
    assert cli(env, "export", "pacs", "--format", "coco", "--out", str(coco_path)).returncode == 0
    coco = json.loads(coco_path.read_text())
    files = {img["id"]: img["file_name"] for img in coco["images"]}
    assert len(coco["annotations"]) == sum(len(v) for v in masks.values())
    for ann in coco["annotations"]:
        png = masks[(files[ann["image_id"]], ann["variant"])][ann["prompt_index"]]
        decoded = mask_util.decode({"size": ann["segmentation"]["size"], "counts": ann["segmentation"]["counts"]})
        assert np.array_equal(decoded > 0, _mask(png)) and ann["area"] == int(_mask(png).sum())
    csv_path = tmp_path / "pacs.csv"
    assert cli(env, "export", "pacs", "--format", "csv", "--out", str(csv_path)).returncode == 0

    # PHI hygiene: no patient name, birth date or ID in SQL, logs, task messages, exports or the report
    report = tmp_path / "report"
    assert cli(env, "report", "pacs", "--out", str(report), "--format", "json").returncode == 0
    dump = subprocess.run(["pg_dump", "-h", "127.0.0.1", "-U", "postgres", "-a", pg_url.rsplit("/", 1)[1]],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert dump.returncode == 0 and "seg_objects" in dump.stdout
    sinks = {"sql": dump.stdout, "export": coco_path.read_text() + csv_path.read_text()}
    sinks["logs"] = "".join(p.read_text(errors="replace") for p in tmp_path.glob("worker-*.log")) + out.stderr
    sinks["report"] = "".join(p.read_text(errors="replace") for p in report.rglob("*") if p.is_file())
    import redis

    client = redis.Redis.from_url(redis_url)
    sinks["broker"] = "".join(str(client.dump(k)) for k in client.keys("*"))
    for name, content in sinks.items():
        for value in (PHI["PatientID"], PHI["PatientBirthDate"], "Doe^Jane", "Secret"):
            assert value not in content, f"{value!r} reached {name}"
    shutil.rmtree(store, ignore_errors=True)


def _wait_for_segs(engine, timeout: float = 120.0) -> None:  # type: ignore[no-untyped-def]
    """Until every done image and variant with segments has its SEG row, STOWed (queue ``seg`` runs after the
    images end ``done``)."""
    import time

    wanted = "select count(distinct (s.image_id, s.variant)) from segments s"
    have = "select count(*) from seg_objects where stow_status is not null or seg_error is not null"
    deadline = time.monotonic() + timeout
    while True:
        with engine.connect() as conn:
            want, got = conn.execute(text(wanted)).scalar(), conn.execute(text(have)).scalar()
        if want and got >= want:
            return
        assert time.monotonic() < deadline, f"{got} of {want} SEGs after {timeout}s"
        time.sleep(0.5)


def test_dimse_run_reads_stored_bytes_and_c_stores_one_seg_per_image_and_variant(
    tmp_path: Path,
    dimse_archive: DimseArchive,
    redis_url: str,
    pg_url: str,
    tiny_checkpoint: Path,
    start_worker,  # type: ignore[no-untyped-def]
) -> None:
    """The same workflow over DIMSE: phantoms in four transfer syntaxes stored into Orthanc, listed with C-FIND,
    fetched with C-GET by two workers (the dataset bytes Orthanc stored), SEGs C-STOREd back; C-FIND then finds
    one SEG per image and variant, each referencing its image."""
    import hashlib

    import pydicom

    from pixelperfect.config import Settings
    from pixelperfect.storage import open_store

    files = archive_files(["explicit_le", "jpeg_baseline", "j2k_lossless", "rle"], seed=67)
    keys = {}
    for data in files:
        dimse_archive.upload(data)
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        keys[f"{ds.StudyInstanceUID}/{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}"] = data
    boxes = tmp_path / "boxes.csv"  # matched by SOPInstanceUID, the key's last part
    boxes.write_text("key,x1,y1,x2,y2\n" + "".join(f"{k.rsplit('/', 1)[1]},50,40,170,150\n" for k in keys))
    store = tmp_path / "store"
    env = service_env(broker_url=redis_url, database_url=pg_url, store_url=f"file://{store}", device="cpu")
    assert cli(env, "db", "upgrade").returncode == 0
    workers = [start_worker(env, hostname=f"w{i}@%h", extra=["--queues", "gpu,seg"], wait=False) for i in (1, 2)]
    for worker in workers:  # both start at once
        worker.wait_ready()
    out = cli(
        env, "submit", dimse_archive.url, "--run", "dimse", "--model", "sam_tiny", "--checkpoint",
        str(tiny_checkpoint), "--filter", f"StudyInstanceUID={','.join(sorted(dimse_archive.studies))}",
        "--filter", "Modality=CR,DX", "--annotations", str(boxes), "--annotations-format", "csv",
        "--variant", "raw", "--variant", "clahe", "--batch-size", "2", "--output", "png,dicom-seg",
        "--stow-to", dimse_archive.url,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr + out.stdout
    status = wait_for_run(env, "dimse")
    assert status["images"]["done"] == len(files), status

    engine = create_engine(pg_url)
    _wait_for_segs(engine)
    with engine.connect() as conn:
        images = dict(conn.execute(text("select key, content_sha256 from images")).all())
        segs = conn.execute(text(
            "select i.key, o.variant, o.sop_instance_uid, o.seg_error, o.stow_status "
            "from seg_objects o join images i on i.id = o.image_id"
        )).all()  # fmt: skip
        hosts = {r[0] for r in conn.execute(text("select distinct worker_host from images"))}
    engine.dispose()
    assert sorted(images) == sorted(keys) and len(hosts) == 2, hosts
    # what the workers read is what Orthanc stored: its dataset bytes, behind the file meta of the C-GET
    archive = open_store(dimse_archive.url, Settings())
    for key, data in keys.items():
        received = archive.get(key)
        stored = dimse_archive.stored_file(key.rsplit("/", 1)[1])
        assert _dataset(received) == _dataset(stored) == _dataset(data)
        assert images[key] == hashlib.sha256(received).hexdigest()
    assert sorted((k, v) for k, v, *_ in segs) == sorted((k, v) for k in keys for v in ("raw", "clahe"))
    assert all(err is None and sent == "stored" for *_, err, sent in segs)

    # C-FIND finds exactly one SEG per image and variant, each referencing its image
    found = [e for e in archive.entries({"StudyInstanceUID": sorted(dimse_archive.studies)}) if not e.image]
    assert sorted(e.key.rsplit("/", 1)[1] for e in found) == sorted(str(s[2]) for s in segs)
    for entry in found:
        seg = next(s for s in segs if s[2] == entry.key.rsplit("/", 1)[1])
        sent = pydicom.dcmread(io.BytesIO(dimse_archive.stored_file(seg[2])))
        ref = sent.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID
        assert ref == seg[0].rsplit("/", 1)[1] and entry.key.split("/")[0] == seg[0].split("/")[0]
    logs = "".join(p.read_text(errors="replace") for p in tmp_path.glob("worker-*.log")) + out.stderr + out.stdout
    for value in (PHI["PatientID"], PHI["PatientBirthDate"], "Doe^Jane"):
        assert value not in logs
    shutil.rmtree(store, ignore_errors=True)


def _dataset(part10: bytes) -> bytes:
    """The encoded dataset of a Part 10 file, behind its preamble and file meta information."""
    import pydicom

    meta = pydicom.dcmread(io.BytesIO(part10), stop_before_pixels=True).file_meta
    return part10[132 + 12 + int(meta.FileMetaInformationGroupLength) :]
