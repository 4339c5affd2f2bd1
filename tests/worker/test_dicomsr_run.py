"""An embedded run with ``--output png,dicom-seg,dicom-sr`` over DICOM files, sending to the real Orthanc: one SR
per image and variant stored, recorded, STOWed, found by QIDO (exactly one per image and variant), its measurements
those SQL holds; an SR that cannot be built leaves the image done and its SEG stored (``sr_error``), and ``retry
--seg`` rebuilds it; a refused STOW is sent again by ``retry``."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pydicom
import pytest
import requests
from sqlalchemy import select

from pixelperfect.db import segs as seg_repo
from pixelperfect.db.models import Image, Segment, SegObject
from pixelperfect.db.session import session_scope
from pixelperfect.embedded import submit
from pixelperfect.export import export_run
from pixelperfect.monitor import run_status
from pixelperfect.pipeline.output.dicomkos import REJECTION_TITLES
from pixelperfect.pipeline.output.dicomsr import SrBuildError
from pixelperfect.producer.enqueue import SubmitRequest
from pixelperfect.producer.lifecycle import delete
from pixelperfect.review import review_run
from pixelperfect.storage import read_url
from pixelperfect.worker import segout
from pixelperfect.worker.segretry import rebuild_segs, restow
from tests.conftest import embedded_settings
from tests.orthanc import ORTHANC, PHI, Orthanc, OrthancProxy, dicom_phantoms
from tests.pipeline.output.test_dicomsr import dciodvfy_errors

pytestmark = pytest.mark.integration


def _study_of(url: str) -> str:
    return str(pydicom.dcmread(io.BytesIO(read_url(url)), stop_before_pixels=True).StudyInstanceUID)


def _qido(study: str, modality: str) -> list[dict[str, object]]:
    reply = requests.get(f"{ORTHANC}/dicom-web/studies/{study}/instances", params={"Modality": modality}, timeout=30)
    reply.raise_for_status()
    return list(reply.json()) if reply.text.strip() else []


def test_sr_per_image_is_stored_sent_and_reads_back(
    tmp_path: Path,
    orthanc: Orthanc,
    orthanc_proxy: OrthancProxy,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    import highdicom as hd

    dicom_phantoms(tmp_path / "archive", 3, seed=71, phi=True)
    settings = embedded_settings(tmp_path)

    def refuse(*_: object, **__: object) -> None:
        raise SrBuildError("injected: highdicom refused the SR")

    monkeypatch.setattr(segout, "build_sr", refuse)
    orthanc_proxy.failing = "/dicom-web/studies"  # STOW answers 503: recorded per instance
    req = SubmitRequest(source=str(tmp_path / "archive" / "images"), run="srs", variants=["raw", "clahe"],
                        annotations=str(tmp_path / "archive" / "labels.csv"), outputs=("png,dicom-sr",),
                        stow_to=orthanc_proxy.url)  # fmt: skip
    submit(req, settings)
    with session_scope(settings.database_url) as s:
        assert {i.status for i in s.scalars(select(Image))} == {"done"}
        objects = list(s.scalars(select(SegObject)))
        assert objects and all(o.object_key and o.sr_key is None for o in objects)  # the SEG is kept
        assert all(o.sr_error == "injected: highdicom refused the SR" for o in objects)
        counts = seg_repo.seg_counts(s, run_id=1)
    assert counts["sr_error"] == counts["stored"] == len(objects) and counts["stow_failed"] == len(objects)
    assert run_status("srs", settings)["dicom"]["sr_error"] == len(objects)

    monkeypatch.undo()
    report = rebuild_segs("srs", settings)  # SEG and SR again from the stored masks: no model
    assert report.rebuilt == len(objects) and report.sr_failed == 0
    orthanc_proxy.failing = None
    sent = restow("srs", settings)
    assert sent.stow_failed == 0 and sent.stowed == 2 * len(objects)  # every SEG and SR
    with session_scope(settings.database_url) as s:
        counts = seg_repo.seg_counts(s, run_id=1)
        objects = list(s.scalars(select(SegObject)))
        segments = {(g.image_id, g.variant, g.prompt_index): g for g in s.scalars(select(Segment))}
        images = {i.id: i for i in s.scalars(select(Image))}
    assert counts["sr_stored"] == counts["sr_stowed"] == len(objects) and counts["sr_error"] == 0

    studies: dict[str, set[str]] = {}
    for o in objects:
        data = read_url(o.sr_key or "")
        assert dciodvfy_errors(data, tmp_path, "sr.dcm") == []
        sr = hd.sr.srread(io.BytesIO(data))
        assert sr.SOPInstanceUID == o.sr_sop_instance_uid
        for number, group in enumerate(sr.content.get_planar_roi_measurement_groups()):
            row = segments[(o.image_id, o.variant, number)]
            got = {m.name.value: m.value for m in group.get_measurements()}
            assert got["PP0001"] == pytest.approx(row.score, abs=1e-9)  # the value SQL holds
            assert got["PP0002"] == pytest.approx(row.stability, abs=1e-9)
            if row.dice is not None:
                assert got["PP0005"] == pytest.approx(row.dice, abs=1e-9)
            spacing = (images[o.image_id].meta or {}).get("spacing_mm")
            area_px = row.area * (spacing[0] * spacing[1] if spacing else 1.0)
            assert got["42798000"] == pytest.approx(area_px, rel=1e-9)  # masks at the source's size
        studies.setdefault(str(sr.StudyInstanceUID), set()).add(str(sr.SOPInstanceUID))
    for study, ours in studies.items():  # exactly one SR per image and variant in the PACS
        found = [str(i["00080018"]["Value"][0]) for i in _qido(study, "SR")]  # type: ignore[index]
        assert sorted(found) == sorted(ours)

    # review: every segment below score 2 (all of them), one KOS per study, stored, sent, found by QIDO
    with pytest.raises(ValueError, match="choose from"):
        review_run("srs", settings, below={"area": 1.0})
    assert review_run("srs", settings, below={"score": -1.0}, out=str(tmp_path / "none.csv")).studies == 0
    stats = review_run("srs", settings, below={"score": 2.0}, out=str(tmp_path / "review.csv"), stow_to=orthanc.url)
    rows = list(csv.DictReader((tmp_path / "review.csv").open()))
    assert len(rows) == stats.segments == len(segments) and not stats.errors
    assert {r["seg_sop_instance_uid"] for r in rows} == {o.sop_instance_uid for o in objects}
    assert stats.studies == len(studies) == stats.stowed == len(stats.kos)
    for url in stats.kos:
        data = read_url(url)
        assert dciodvfy_errors(data, tmp_path, "kos.dcm") == []
        kos = pydicom.dcmread(io.BytesIO(data))
        title = kos.ConceptNameCodeSequence[0]
        assert (title.CodeValue, title.CodingSchemeDesignator) == ("113000", "DCM") and kos.Modality == "KO"
        assert title.CodeValue not in REJECTION_TITLES
        refs = {str(i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID) for i in kos.ContentSequence
                if i.ValueType in ("IMAGE", "COMPOSITE")}  # fmt: skip
        study = str(kos.StudyInstanceUID)
        segs_here = {o.sop_instance_uid for o in objects if o.sr_key and _study_of(o.sr_key) == study}
        assert segs_here and segs_here <= refs  # the SEGs of the study's images are selected too
        text = [i.TextValue for i in kos.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "113012"]
        assert text and "score" in text[0] and "< 2" in text[0] and text[0].startswith("RESEARCH USE ONLY")
        found = [str(i["00080018"]["Value"][0]) for i in _qido(study, "KO")]  # type: ignore[index]
        assert found == [str(kos.SOPInstanceUID)]

    # exports: provenance in COCO's info; --deidentify replaces keys by stable pseudonyms, mapping kept apart
    keys = sorted(i.key for i in images.values())
    plain = export_run("srs", settings, fmt="coco", out=str(tmp_path / "plain.json"))
    info = json.loads((tmp_path / "plain.json").read_text())["info"]
    assert info["contains_uids"] is True and info["manufacturer"] == "PixelPerfect" and info["run"] == "srs"
    assert info["device_uid"].startswith("1.2.826.0.1.3680043.8.498.") and info["code_version"]
    deid = export_run("srs", settings, fmt="coco", out=str(tmp_path / "deid.json"), deidentify=True)
    assert deid.mapping == str(tmp_path / "deid.json") + ".mapping.csv" and plain.annotations == deid.annotations
    coco = json.loads((tmp_path / "deid.json").read_text())
    assert coco["info"]["contains_uids"] is False and coco["info"]["deidentified"] is True
    names = sorted(i["file_name"] for i in coco["images"])
    assert len(names) == len(keys) and not set(names) & set(keys)
    assert all(a["seg_url"] is None for a in coco["annotations"])
    mapping = {r["pseudonym"]: r["original"] for r in csv.DictReader(Path(deid.mapping or "").read_text().splitlines())}
    assert sorted(mapping[n] for n in names) == keys
    export_run("srs", settings, fmt="csv", out=str(tmp_path / "deid.csv"), deidentify=True)
    text = (tmp_path / "deid.csv").read_text().splitlines()
    rows = list(csv.DictReader(line for line in text if not line.startswith("#")))
    assert rows and {r["image_key"] for r in rows} <= set(names)  # the same pseudonyms in a second export
    assert all(r["mask_url"] == "" and r["seg_url"] == "" for r in rows)
    exported = (tmp_path / "deid.json").read_text() + (tmp_path / "deid.csv").read_text()
    for key in keys:
        assert key not in exported and Path(key).stem not in exported

    # PHI hygiene over the new outputs: SQL, logs, the review list and the exports hold no patient identifier
    sinks = {
        "sql": Path(settings.database_url.removeprefix("sqlite:///")).read_bytes().decode("latin-1"),
        "logs": caplog.text,
        "review": (tmp_path / "review.csv").read_text(),
        "exports": exported + (tmp_path / "plain.json").read_text(),
    }
    for name, content in sinks.items():
        for value in (PHI["PatientID"], PHI["PatientBirthDate"], "Doe^Jane", "Secret"):
            assert value not in content, f"{value!r} reached {name}"

    # delete: SEG, SR and KOS objects go with the run; those the PACS accepted are listed (SEGs and SRs)
    listed = tmp_path / "stowed.csv"
    result = delete("srs", settings, stowed_list=listed)
    assert result.stowed == 2 * len(objects)
    uids = {r["sop_instance_uid"] for r in csv.DictReader(listed.read_text().splitlines())}
    assert {o.sr_sop_instance_uid for o in objects} <= uids and {o.sop_instance_uid for o in objects} <= uids
    for sub in ("seg", "sr", "kos", "masks"):
        assert not list((tmp_path / "store" / "srs" / sub).rglob("*.*")), sub


def test_a_dicomweb_run_writes_seg_and_sr_back_and_review_sends_kos(tmp_path: Path, orthanc: Orthanc) -> None:
    """The issue's done-when: a run over Orthanc (our own studies, chosen by StudyInstanceUID) writes a SEG and an
    SR per image back into it; ``review`` reads the KOS evidence from WADO-RS metadata and Orthanc stores the KOS."""
    paths = dicom_phantoms(tmp_path / "archive", 2, seed=73)
    orthanc.stow_files(paths)
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    studies = sorted({str(h.StudyInstanceUID) for h in headers})
    boxes = tmp_path / "boxes.csv"  # matched by SOPInstanceUID, the key's last part
    boxes.write_text("key,x1,y1,x2,y2\n" + "".join(f"{h.SOPInstanceUID},40,40,200,180\n" for h in headers))
    settings = embedded_settings(tmp_path)
    req = SubmitRequest(source=orthanc.url, run="web", variants=["raw"], annotations=str(boxes),
                        annotations_format="csv", outputs=("png,dicom-seg,dicom-sr",), stow_to=orthanc.url,
                        filters=[f"StudyInstanceUID={','.join(studies)}"])  # fmt: skip
    submit(req, settings)
    with session_scope(settings.database_url) as s:
        assert {i.status for i in s.scalars(select(Image))} == {"done"}
        objects = list(s.scalars(select(SegObject)))
    assert len(objects) == len(paths) and all(o.stow_status == o.sr_stow_status == "stored" for o in objects)
    for study in studies:
        mine = {str(h.SOPInstanceUID) for h in headers if str(h.StudyInstanceUID) == study}
        srs = [pydicom.Dataset.from_json(i) for i in _qido(study, "SR")]
        assert len(srs) == len(mine)  # exactly one SR per image (one variant)
        segs = [pydicom.Dataset.from_json(i) for i in _qido(study, "SEG")]
        assert len(segs) == len(mine)
    stats = review_run("web", settings, below={"score": 2.0})
    assert stats.studies == len(studies) == stats.stowed and not stats.errors and not stats.refused
    for study in studies:
        assert len(_qido(study, "KO")) == 1
