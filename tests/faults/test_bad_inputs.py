"""Bad inputs: 50 broken or hostile files mixed into the same batches as good phantoms. Each bad one ends failed
with its specific reason, every good one ends done, the pool process never dies, and its memory stays bounded
(decompression bombs are refused from their headers). DICOM identifiers are never stored in clear."""

from __future__ import annotations

import contextlib
import csv
import random
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.faults import corpus
from tests.faults.conftest import FaultBed
from tests.faults.runs import (
    Archive,
    audit_run,
    log_count,
    pool_children,
    rss_mib,
    submit_run,
    wait_drained,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MAX_PIXELS = 4_000_000  # the header limit of the worker in this test; the bomb would inflate to 100 MP


class RssSampler(threading.Thread):
    """Peak resident memory of a worker's pool processes, sampled every 20 ms, and every pool pid seen."""

    def __init__(self, main_pid: int) -> None:
        super().__init__(daemon=True)
        self.main_pid, self.peak_mib, self.pids = main_pid, 0.0, set()
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for pid in pool_children(self.main_pid):
                self.pids.add(pid)
                with contextlib.suppress(FileNotFoundError, LookupError):
                    self.peak_mib = max(self.peak_mib, rss_mib(pid, "VmHWM"))
            time.sleep(0.02)


def test_bad_files_fail_with_their_reason_and_good_ones_finish(
    bed: FaultBed,
) -> None:
    t0 = time.monotonic()
    client = bed.s3.client()
    bad = corpus.bad_corpus()
    phantoms = sorted((bed.phantoms / "images").iterdir())[:8]
    good: list[tuple[str, bytes]] = [(p.name, p.read_bytes()) for p in phantoms]
    good += corpus.mislabelled_corpus()
    good.append(("identified.dcm", corpus.dicom(corpus.grey(128), identifiers=True)))
    items = [(n, d, r) for n, d, r in bad] + [(n, d, None) for n, d in good]
    random.Random(3).shuffle(items)  # bad and good share batches
    expected: dict[str, str | None] = {}
    names: dict[str, str] = {}
    for i, (name, data, reason) in enumerate(items):
        key = f"archive/images/{i:02d}-{name}"
        client.put_object(Bucket=bed.bucket, Key=key, Body=data)
        expected[key.split("archive/images/", 1)[1]] = reason
        names[name] = key.split("archive/images/", 1)[1]
    for rel in corpus.TRAVERSAL_KEYS:  # S3 stores these literally; no store may follow them
        client.put_object(Bucket=bed.bucket, Key=f"archive/images/{rel}", Body=corpus._png(corpus.grey(64)))
        expected[rel] = "invalid_key"
    # boxes for the phantoms (by their new names) and one for the identified DICOM
    rows = ["patientId,x,y,width,height,Target"]
    for row in csv.DictReader((bed.phantoms / "labels.csv").open()):
        new = names.get(row["patientId"] + ".png")
        if new and row["Target"] == "1":
            rows.append(f"{Path(new).stem},{row['x']},{row['y']},{row['width']},{row['height']},1")
    rows.append(f"{Path(names['identified.dcm']).stem},30,30,60,60,1")
    client.put_object(Bucket=bed.bucket, Key="archive/labels.csv", Body="\n".join(rows).encode())
    client.put_object(Bucket=bed.bucket, Key="models/sam_tiny.pth", Body=bed.checkpoint.read_bytes())
    archive = Archive(bed.bucket, [], {}, f"s3://{bed.bucket}/models/sam_tiny.pth")

    stack = bed.stack(max_pixels=MAX_PIXELS)
    worker = bed.start_worker(stack.env())
    sampler = RssSampler(worker.proc.pid)
    sampler.start()
    result = submit_run(stack, archive, "bad", batch_size=6)
    assert result.images == len(expected), (result.images, len(expected))
    status = wait_drained(bed.pg_url, "bad", [worker], timeout=120)
    sampler.stop.set()
    sampler.join()
    (child,) = pool_children(worker.proc.pid)
    settled_mib = rss_mib(child)  # after every batch: model, buffers, allocator caches

    audit = audit_run(stack, bed.s3, "bad")
    got = {key: audit.failures.get(key, (None, None))[0] for key in expected}
    wrong = {
        k: (expected[k], got[k], (audit.failures.get(k) or ("", ""))[1][:120])
        for k in expected
        if expected[k] != got[k]
    }
    assert wrong == {}, wrong
    n_bad = sum(r is not None for r in expected.values())
    assert n_bad >= 40
    assert status == {"queued": 0, "done": len(good), "failed": n_bad}
    assert all(err for _, err in audit.failures.values()), "every failure carries its error text"
    assert audit.lost == 0 and audit.duplicates == 0 and audit.missing_objects == [] and audit.bad_masks == []
    # no crash loop: one pool process served the whole run; memory stayed bounded
    assert log_count(worker.log, r"WorkerLostError|exited with") == 0
    assert len(sampler.pids) == 1, sampler.pids
    # a decoded bomb (100 MP) would have raised the peak by >= 95 MiB over where the process settled
    assert sampler.peak_mib > 0 and 0 <= sampler.peak_mib - settled_mib < 60, (sampler.peak_mib, settled_mib)

    # DICOM identifiers: hashed in meta, never in clear in the database or the worker log
    secrets = [
        corpus.PATIENT_NAME,
        corpus.PATIENT_ID,
        corpus.ACCESSION,
        corpus.BIRTH_DATE,
        "Secretname",
        "St Secret Hospital",
    ]
    engine = create_engine(bed.pg_url)
    with engine.connect() as conn:
        dump = "\n".join(
            str(row[0])
            for table in ("runs", "images", "segments", "annotations")
            for row in conn.execute(text(f"SELECT row_to_json(t)::text FROM {table} t"))
        )
        meta = conn.execute(text("SELECT meta FROM images WHERE key = :k"), {"k": names["identified.dcm"]}).scalar_one()
    engine.dispose()
    assert meta["format"] == "dicom" and len(meta["patient_id_hash"]) == 16 and meta.get("accession_hash")
    leaked = [s for s in secrets if s in dump or s in worker.log.read_text(errors="replace")]
    assert leaked == [], leaked
    bed.table.append(
        (
            f"bad inputs ({n_bad} bad, {len(good)} good, same batches)",
            len(expected),
            f"{n_bad} bad files ({len(set(r for r in expected.values() if r))} reasons); pool RSS peak "
            f"{sampler.peak_mib:.0f} MiB (settled {settled_mib:.0f})",
            audit.lost,
            audit.duplicates,
            time.monotonic() - t0,
        )
    )
