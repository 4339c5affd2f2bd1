"""A SEG that cannot be built leaves the image done with ``seg_error``, and ``retry --seg`` rebuilds it from the
stored masks without the model; STOW-RS refusals are recorded per instance and ``retry`` sends them again.
Embedded runs over DICOM files in a directory (a bucket of DICOMs), Orthanc as the STOW-RS target."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import select

from pixelperfect.db import segs as seg_repo
from pixelperfect.db.models import Image, SegObject
from pixelperfect.db.session import session_scope
from pixelperfect.embedded import submit
from pixelperfect.pipeline.output.dicomseg import SegBuildError
from pixelperfect.producer.enqueue import SubmitRequest
from pixelperfect.worker import segout
from pixelperfect.worker.segretry import rebuild_segs, restow
from tests.conftest import S3Server, embedded_settings
from tests.orthanc import Orthanc, OrthancProxy, dicom_phantoms

pytestmark = pytest.mark.integration


def _rows(url: str) -> list[tuple[str, str | None, str | None, str | None]]:
    with session_scope(url) as s:
        return [(r.variant, r.object_key, r.seg_error, r.stow_status) for r in s.scalars(select(SegObject))]


def test_seg_error_keeps_masks_and_retry_seg_rebuilds(
    tmp_path: Path,
    orthanc: Orthanc,
    orthanc_proxy: OrthancProxy,
    monkeypatch: pytest.MonkeyPatch,
    s3_server: S3Server,
    s3_bucket: str,
) -> None:
    dicom_phantoms(tmp_path / "archive", 3, seed=61)
    settings = embedded_settings(tmp_path)

    def refuse(*_: object, **__: object) -> None:
        raise SegBuildError("injected: highdicom refused the SEG")

    monkeypatch.setattr(segout, "build_seg", refuse)
    orthanc_proxy.failing = "/dicom-web/studies"  # STOW-RS answers 503 as well
    req = SubmitRequest(source=str(tmp_path / "archive" / "images"), run="segs", variants=["raw", "clahe"],
                        annotations=str(tmp_path / "archive" / "labels.csv"), outputs=("png,dicom-seg",),
                        stow_to=orthanc_proxy.url)  # fmt: skip
    submit(req, settings)
    with session_scope(settings.database_url) as s:
        assert {i.status for i in s.scalars(select(Image))} == {"done"}
        with_segments = {i.id for i in s.scalars(select(Image)) if i.n_segments}
    rows = _rows(settings.database_url)
    assert len(rows) == 2 * len(with_segments) > 0
    assert all(key is None and err == "injected: highdicom refused the SEG" for _, key, err, _ in rows)
    assert not list((tmp_path / "store" / "segs" / "seg").rglob("*.dcm"))
    assert list((tmp_path / "store" / "segs" / "masks").rglob("*.png"))  # the masks were written regardless

    monkeypatch.undo()
    report = rebuild_segs("segs", settings)  # from the stored masks: no model is loaded here
    assert (report.rebuilt, report.failed, report.stowed, report.stow_failed) == (len(rows), 0, 0, len(rows))
    rows = _rows(settings.database_url)
    assert all(key and key.endswith(".dcm") and err is None and stow == "failed" for _, key, err, stow in rows)
    assert rebuild_segs("segs", settings).rebuilt == 0  # nothing missing any more

    orthanc_proxy.failing = None
    assert restow("segs", settings).stowed == len(rows)
    with session_scope(settings.database_url) as s:
        assert seg_repo.seg_counts(s, run_id=1) == {"stored": len(rows), "seg_error": 0, "stowed": len(rows),
                                                    "stow_failed": 0, "sr_stored": 0, "sr_error": 0, "sr_stowed": 0,
                                                    "sr_stow_failed": 0}  # fmt: skip
    assert len(orthanc.studies() - orthanc.studies_before) == len(with_segments)

    from pixelperfect.export import export_run

    stats = export_run("segs", settings, fmt="coco", out=str(tmp_path / "raw.json"), variant="raw")
    coco = json.loads((tmp_path / "raw.json").read_text())
    assert stats.annotations == len(coco["annotations"]) > 0
    assert {a["variant"] for a in coco["annotations"]} == {"raw"} and all(a["seg_url"] for a in coco["annotations"])
    with pytest.raises(ValueError, match="'nope'"):
        export_run("segs", settings, fmt="coco", out=str(tmp_path / "x.json"), variant="nope")
    # the CSV export to an S3 URL: uploaded when complete, one row per segment
    to_s3 = settings.model_copy(update={"s3_endpoint_url": s3_server.endpoint})
    stats = export_run("segs", to_s3, fmt="csv", out=f"s3://{s3_bucket}/exports/segs.csv")
    body = s3_server.client().get_object(Bucket=s3_bucket, Key="exports/segs.csv")["Body"].read().decode()
    header = [line for line in body.strip().splitlines() if line.startswith("# ")]
    lines = [line for line in body.strip().splitlines() if not line.startswith("# ")]
    assert lines[0].startswith("image_key,width,height,variant") and len(lines) == 1 + stats.annotations
    assert "# contains_uids: True" in header and "# manufacturer: PixelPerfect" in header
