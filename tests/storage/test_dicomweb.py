"""DICOMweb source against a real Orthanc: paged QIDO-RS listing, filters, non-image SOP classes, PatientID
matching, and the faults: PACS down at submit, 5xx during a run, an instance deleted between listing and fetch."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from pixelperfect.config import Settings
from pixelperfect.embedded import submit
from pixelperfect.inputs.sources import SourceListing
from pixelperfect.pipeline.output.dicomseg import SegAlgorithm, build_seg
from pixelperfect.producer.enqueue import SubmitError, SubmitRequest
from pixelperfect.producer.pacs import parse_filters
from pixelperfect.storage import InvalidKeyError
from pixelperfect.storage.dicomweb import DicomwebStore, service_url, split_key
from tests.conftest import embedded_settings, free_port
from tests.orthanc import Orthanc, OrthancProxy, dicom_phantoms

pytestmark = pytest.mark.integration


def _statuses(settings: Settings, run: str) -> dict[str, tuple[str, str | None]]:
    db = settings.database_url.removeprefix("sqlite:///")
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "select key, status, error_reason from images join runs on runs.id = images.run_id where runs.name = ?",
            (run,),
        ).fetchall()
    return {k: (s, r) for k, s, r in rows}


def test_url_and_filter_validation() -> None:
    assert service_url("dicomweb+http://pacs:8042/dicom-web/") == "http://pacs:8042/dicom-web"
    with pytest.raises(ValueError, match="PIXELPERFECT_DICOMWEB_USERNAME"):
        service_url("dicomweb+https://alice:secret@pacs/dicom-web")
    with pytest.raises(InvalidKeyError, match="StudyUID/SeriesUID/SOPInstanceUID"):
        split_key("1.2/../1.3")
    assert parse_filters(["Modality=CR,DX", "BodyPartExamined=CHEST"]) == {
        "Modality": ["CR", "DX"],
        "BodyPartExamined": ["CHEST"],
    }
    with pytest.raises(ValueError, match="'Modalty' is not a DICOM attribute keyword"):
        parse_filters(["Modalty=CR"])


def test_listing_is_paged_filtered_and_skips_segs(
    tmp_path: Path, orthanc: Orthanc, orthanc_proxy: OrthancProxy
) -> None:
    paths = dicom_phantoms(tmp_path, 5, seed=41)
    orthanc.stow_files(paths)
    # a SEG of the first image in the same study: a non-image SOP class the listing must skip
    mask = np.zeros((256, 256), bool)
    mask[10:50, 10:50] = True
    _, seg = build_seg(
        paths[0].read_bytes(), [mask], SegAlgorithm("sam_tiny", None, "raw", "t"), run="x", image_key="k"
    )
    DicomwebStore(orthanc.url).put("seg", seg)
    settings = Settings(dicomweb_page_size=2)

    listing = SourceListing.open(orthanc_proxy.url, settings)
    keys = list(listing)
    assert len(keys) >= 5 and listing.skipped >= 1
    assert all(len(split_key(k)) == 3 for k in keys)
    qido = [h for h in orthanc_proxy.hits if h.startswith("/dicom-web/instances")]
    assert any("offset=2" in h for h in qido) and all("limit=2" in h for h in qido)  # paged, never one response

    cr = list(SourceListing.open(orthanc.url, settings, parse_filters(["Modality=CR"])))
    dx = list(SourceListing.open(orthanc.url, settings, parse_filters(["Modality=DX"])))
    both = list(SourceListing.open(orthanc.url, settings, parse_filters(["Modality=CR,DX"])))
    ours = {str(__import__("pydicom").dcmread(p).SOPInstanceUID) for p in paths}
    assert len({k.rsplit("/", 1)[1] for k in cr} & ours) == 3 and len({k.rsplit("/", 1)[1] for k in dx} & ours) == 2
    assert sorted(both) == sorted(cr + dx)


def test_pacs_down_at_submit_registers_nothing(tmp_path: Path) -> None:
    settings = embedded_settings(tmp_path, dicomweb_attempts=2, dicomweb_backoff_s=0.0)
    url = f"dicomweb+http://127.0.0.1:{free_port()}/dicom-web"
    with pytest.raises(SubmitError, match=re.escape(f"cannot list {url}") + ".*ConnectionError after 2 attempts"):
        submit(SubmitRequest(source=url, run="down", variants=["raw"]), settings)
    db = tmp_path / "pp.db"
    if db.exists():
        with sqlite3.connect(db) as conn:
            tables = {r[0] for r in conn.execute("select name from sqlite_master")}
            assert "runs" not in tables or conn.execute("select count(*) from runs").fetchone()[0] == 0


def test_rsna_annotations_match_by_hashed_patient_id(tmp_path: Path, orthanc: Orthanc) -> None:
    paths = dicom_phantoms(tmp_path, 4, seed=42, phi=True)
    orthanc.stow_files(paths)
    settings = embedded_settings(tmp_path)
    patients = {line.split(",")[0] for line in (tmp_path / "labels_pid.csv").read_text().splitlines()[1:]}
    result = submit(
        SubmitRequest(
            source=orthanc.url,
            run="rsna",
            variants=["raw"],
            annotations=str(tmp_path / "labels_pid.csv"),
            filters=["Modality=CR,DX"],
        ),
        settings,
    )
    assert result.annotated == len(patients) == 4  # negatives (Target=0) are annotated too
    statuses = _statuses(settings, "rsna")
    assert len(statuses) >= 4 and {s for s, _ in statuses.values()} == {"done"}
    dump = "\n".join(sqlite3.connect(tmp_path / "pp.db").iterdump())
    assert "MRN-7734-SECRET" not in dump and "Doe^Jane" not in dump


def test_5xx_during_run_fails_source_unavailable_then_retry_recovers(
    tmp_path: Path, orthanc: Orthanc, orthanc_proxy: OrthancProxy
) -> None:
    from pixelperfect.cli.run import retry_failed

    paths = dicom_phantoms(tmp_path, 3, seed=43)
    orthanc.stow_files(paths)
    uids = [str(__import__("pydicom").dcmread(p).StudyInstanceUID) for p in paths]
    settings = embedded_settings(tmp_path, dicomweb_attempts=3, dicomweb_backoff_s=0.05)
    orthanc_proxy.failing = "/dicom-web/studies/"  # WADO-RS retrievals answer 503; QIDO-RS listing works
    manifest = tmp_path / "keys.txt"
    keys = [k for k in SourceListing.open(orthanc.url, settings) if k.split("/")[0] in uids]
    manifest.write_text("\n".join(keys))
    submit(SubmitRequest(source=orthanc_proxy.url, run="flaky", variants=["raw"], manifest=str(manifest)), settings)
    assert set(_statuses(settings, "flaky").values()) == {("failed", "source_unavailable")}
    wado = [h for h in orthanc_proxy.hits if h.startswith("/dicom-web/studies/")]
    assert len(wado) == 3 * len(keys)  # each retrieval tried dicomweb_attempts times
    orthanc_proxy.failing = None
    retry_failed("flaky", settings)
    assert set(_statuses(settings, "flaky").values()) == {("done", None)}


def test_instance_deleted_between_listing_and_fetch_is_not_found(tmp_path: Path, orthanc: Orthanc) -> None:
    import pydicom

    paths = dicom_phantoms(tmp_path, 2, seed=44)
    orthanc.stow_files(paths)
    sops = [str(pydicom.dcmread(p).SOPInstanceUID) for p in paths]
    settings = embedded_settings(tmp_path)
    keys = [k for k in SourceListing.open(orthanc.url, settings) if k.rsplit("/", 1)[1] in sops]
    assert len(keys) == 2
    orthanc.delete_instance(sops[0])
    manifest = tmp_path / "keys.txt"
    manifest.write_text("\n".join(keys))
    submit(SubmitRequest(source=orthanc.url, run="gone", variants=["raw"], manifest=str(manifest)), settings)
    statuses = _statuses(settings, "gone")
    gone = next(k for k in keys if k.endswith(sops[0]))
    assert statuses[gone] == ("failed", "not_found")
    assert statuses[next(k for k in keys if k != gone)] == ("done", None)


def test_credentials_come_from_settings_and_stay_out_of_logs(
    tmp_path: Path, orthanc: Orthanc, orthanc_proxy: OrthancProxy, caplog: pytest.LogCaptureFixture
) -> None:
    import base64

    from pydantic import SecretStr

    orthanc.stow_files(dicom_phantoms(tmp_path, 1, seed=46))
    token = Settings(dicomweb_token=SecretStr("tok-SECRET-1"), dicomweb_attempts=1)
    basic = Settings(dicomweb_username="alice", dicomweb_password=SecretStr("pw-SECRET-2"), dicomweb_attempts=1)
    caplog.set_level("DEBUG")
    key = next(iter(SourceListing.open(orthanc_proxy.url, token)))
    DicomwebStore(orthanc_proxy.url, basic).get(key)
    assert orthanc_proxy.authorization[0] == "Bearer tok-SECRET-1"
    assert orthanc_proxy.authorization[-1] == "Basic " + base64.b64encode(b"alice:pw-SECRET-2").decode()
    assert "SECRET" not in caplog.text and "SECRET" not in repr(token)


def test_header_comes_from_wado_rs_metadata_without_pixels(
    tmp_path: Path, orthanc: Orthanc, orthanc_proxy: OrthancProxy
) -> None:
    """``header`` (the review's KOS evidence) asks WADO-RS for metadata, never for the instance's pixels."""
    import pydicom

    path = dicom_phantoms(tmp_path, 1, seed=43)[0]
    orthanc.stow_files([path])
    ds = pydicom.dcmread(path)
    key = f"{ds.StudyInstanceUID}/{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}"
    header = DicomwebStore(orthanc_proxy.url).header(key)
    assert header.SOPInstanceUID == ds.SOPInstanceUID and header.StudyInstanceUID == ds.StudyInstanceUID
    assert header.SOPClassUID == ds.SOPClassUID and header.Modality == ds.Modality
    assert "PixelData" not in header  # bulk data is a URI in the metadata, left out
    assert any(h.endswith(f"/instances/{ds.SOPInstanceUID}/metadata") for h in orthanc_proxy.hits)
    assert not any(h.endswith(f"/instances/{ds.SOPInstanceUID}") for h in orthanc_proxy.hits)
