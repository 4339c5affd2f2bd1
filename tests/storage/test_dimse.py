"""A DIMSE archive (dimse://) against the real Orthanc's DICOM server: C-FIND listing study by study with filters at
their levels, C-GET of the stored bytes in each transfer syntax over one reused association, C-STORE with refusals
per instance, and the faults: archive down or refusing at submit, failures during a run, an instance gone between
listing and fetch, a non-image object and a transfer syntax we cannot decode. Orthanc is shared: each test uses UIDs
of its own, lists only its own studies and deletes them after."""

from __future__ import annotations

import io
import re
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest

from pixelperfect.config import Settings
from pixelperfect.embedded import submit
from pixelperfect.inputs.sources import SourceListing
from pixelperfect.pipeline.output.dicomseg import SegAlgorithm, build_seg
from pixelperfect.producer.enqueue import SubmitError, SubmitRequest
from pixelperfect.producer.pacs import archive_settings
from pixelperfect.storage import check_archive_url, is_archive_url, open_store
from pixelperfect.storage.dimse import (
    GET_MODEL,
    MAX_CONTEXTS,
    XRAY_STORAGE,
    DimseStore,
    decoded_syntaxes,
    filter_level,
    parse_dimse_url,
    retrieve_contexts,
)
from tests.conftest import embedded_settings, free_port
from tests.orthanc import PHI, DimseArchive, TcpProxy, archive_files

pytestmark = pytest.mark.integration

KINDS = ["explicit_le", "jpeg_baseline", "jpeg_lossless_sv1", "j2k_lossless", "j2k_lossy", "jpeg_ls", "rle"]


def _dataset_bytes(part10: bytes) -> bytes:
    """The encoded dataset of a Part 10 file, behind its preamble and file meta information."""
    import pydicom

    meta = pydicom.dcmread(io.BytesIO(part10), stop_before_pixels=True).file_meta
    return part10[132 + 12 + int(meta.FileMetaInformationGroupLength) :]


def _uids(data: bytes) -> tuple[str, str, str]:
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)


def _key(data: bytes) -> str:
    return "/".join(_uids(data))


def _statuses(settings: Settings, run: str) -> dict[str, tuple[str, str | None]]:
    with sqlite3.connect(settings.database_url.removeprefix("sqlite:///")) as conn:
        rows = conn.execute(
            "select key, status, error_reason from images join runs on runs.id = images.run_id where runs.name = ?",
            (run,),
        ).fetchall()
    return {k: (s, r) for k, s, r in rows}


def _seg(source: bytes, shape: tuple[int, int] = (200, 240)) -> bytes:
    mask = np.zeros(shape, bool)
    mask[10:50, 10:50] = True
    return build_seg(source, [mask], SegAlgorithm("sam_tiny", None, "raw", "t"), run="x", image_key="k")[1]


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("dimse://127.0.0.1:4242", "without the archive's AE title"),
        ("dimse://ORTHANC@127.0.0.1:4242/path", "must not have a path"),
        ("dimse://ORTHANC@:4242", "without a host"),
        ("dimse://ORTHANC@host:port", "invalid port"),
        ("dimse://SEVENTEEN-CHARS-AE@host:104", "1-16 printable ASCII"),
        ("dimse://A\\B@host:104", "without a backslash"),
    ],
)
def test_bad_dimse_urls_are_refused_naming_the_problem(url: str, error: str) -> None:
    with pytest.raises(ValueError, match=re.escape(error)):
        parse_dimse_url(url)
    with pytest.raises(ValueError, match=re.escape(error)):
        archive_settings("s3://b/p", ["png,dicom-seg"], url, [])


def test_urls_levels_and_the_retrieve_contexts() -> None:
    address = parse_dimse_url("dimse://ORTHANC@127.0.0.1")
    assert (address.called_ae, address.host, address.port, address.url) == (
        "ORTHANC", "127.0.0.1", 104, "dimse://ORTHANC@127.0.0.1:104",
    )  # fmt: skip
    assert parse_dimse_url("dimse://PACS@[::1]:11112/").url == "dimse://PACS@[::1]:11112"
    store = open_store("dimse://ORTHANC@127.0.0.1:4242", Settings(dimse_ae_title="ME"))
    assert isinstance(store, DimseStore) and store.keys_by_uid and store.ae_title == "ME"
    assert is_archive_url("dimse://A@h:1") and is_archive_url("dicomweb+http://h/d") and not is_archive_url("s3://b")
    assert check_archive_url("dimse://A@h") == "dimse://A@h:104"
    with pytest.raises(ValueError, match="not a DICOM archive"):
        check_archive_url("file:///tmp/x")
    with pytest.raises(ValueError, match="AE title"):
        Settings(dimse_ae_title="BAD\\AE")
    # the run's archive options: a DIMSE target and filters on a DIMSE source
    options = archive_settings("dimse://ORTHANC@127.0.0.1:4242", ["png,dicom-seg"], "dimse://ORTHANC@127.0.0.1:4242",
                               ["Modality=CR,DX"])  # fmt: skip
    assert options["stow_to"] == "dimse://ORTHANC@127.0.0.1:4242" and options["filters"] == {"Modality": ["CR", "DX"]}
    with pytest.raises(ValueError, match="--filter applies to DICOM archives"):
        archive_settings("s3://b/p", ["png"], None, ["Modality=CR"])
    # each keyword is matched at the level that holds it
    assert [filter_level(k) for k in ("PatientID", "StudyDate", "Modality", "BodyPartExamined", "ViewPosition")] == [
        "STUDY", "STUDY", "SERIES", "SERIES", "IMAGE",
    ]  # fmt: skip
    # every X-ray class with every decoded syntax, one context each, within the limit; the C-GET model among them
    contexts = retrieve_contexts()
    assert len(contexts) <= MAX_CONTEXTS and GET_MODEL in {c[0] for c in contexts}
    storage = {(sop, syntaxes[0]) for sop, syntaxes in contexts if sop in XRAY_STORAGE}
    assert all(len(s) == 1 for sop, s in contexts if sop in XRAY_STORAGE)
    assert storage == {(sop, ts) for sop in XRAY_STORAGE for ts in decoded_syntaxes()}
    assert {"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.5"} <= set(decoded_syntaxes())


def test_listing_walks_studies_filters_at_each_level_and_skips_non_images(dimse_archive: DimseArchive) -> None:
    files = archive_files(["explicit_le"] * 4, seed=61)  # CR, DX, CR, DX: each its own study
    for data in files:
        dimse_archive.upload(data)
    dimse_archive.upload(_seg(files[0]))  # a SEG in the first study: no image
    ours = {"StudyInstanceUID": sorted(dimse_archive.studies)}  # a study-level filter: only this test's studies
    store = open_store(dimse_archive.url, Settings())

    entries = list(store.entries(ours))
    assert sorted(e.key for e in entries if e.image) == sorted(_key(d) for d in files)
    assert [e.image for e in entries].count(False) == 1
    import pydicom

    pids = {_key(d): str(pydicom.dcmread(io.BytesIO(d)).PatientID) for d in files}
    assert all(e.patient_id == pids[e.key] for e in entries if e.image)  # the study's PatientID, for RSNA labels

    listing = SourceListing.open(dimse_archive.url, Settings(), {**ours, "Modality": ["CR", "DX"]})
    assert sorted(listing) == sorted(_key(d) for d in files) and listing.skipped == 0  # the SEG series: Modality SEG
    cr = list(SourceListing.open(dimse_archive.url, Settings(), {**ours, "Modality": ["CR"]}))
    assert sorted(cr) == sorted(_key(files[i]) for i in (0, 2))
    pa = list(SourceListing.open(dimse_archive.url, Settings(), {**ours, "ViewPosition": ["PA"], "Modality": ["DX"]}))
    assert sorted(pa) == sorted(_key(files[i]) for i in (1, 3))  # an IMAGE-level key, matched by the archive
    assert list(SourceListing.open(dimse_archive.url, Settings(), {**ours, "ViewPosition": ["A?"]})) == []


def test_get_returns_the_stored_bytes_in_each_transfer_syntax_over_one_association(
    dimse_archive: DimseArchive, dimse_proxy: TcpProxy
) -> None:
    import pydicom

    files = archive_files(KINDS, seed=62)
    for data in files:
        dimse_archive.upload(data)
    store = open_store(dimse_proxy.url, Settings(dimse_attempts=3, dimse_backoff_s=0.05))
    assert isinstance(store, DimseStore)
    for data in files:
        _, _, sop = _uids(data)
        received = store.get(_key(data))
        stored = dimse_archive.stored_file(sop)
        assert _dataset_bytes(received) == _dataset_bytes(stored) == _dataset_bytes(data)  # as stored: no transcode
        meta = pydicom.dcmread(io.BytesIO(received), stop_before_pixels=True).file_meta
        assert meta.TransferSyntaxUID == pydicom.dcmread(io.BytesIO(data)).file_meta.TransferSyntaxUID
    assert dimse_proxy.connections == 1  # one association for every fetch
    assert store.exists(_key(files[0])) and not store.exists(_key(files[0]).rsplit("/", 1)[0] + "/1.2.3")
    dimse_proxy.fail()  # the association breaks: the next fetch opens a new one, once the archive is back
    deadline = time.monotonic() + 5  # until pynetdicom has read the end of the connection (else the next C-GET
    while store._fetch.is_established and time.monotonic() < deadline:  # waits out dimse_timeout_s on a dead one)
        time.sleep(0.01)
    dimse_proxy.failing = False
    assert _dataset_bytes(store.get(_key(files[1]))) == _dataset_bytes(files[1])
    assert dimse_proxy.connections == 2
    store.close()


def test_archive_down_or_refusing_at_submit_registers_nothing(tmp_path: Path, dimse_archive: DimseArchive) -> None:
    settings = embedded_settings(tmp_path, dimse_attempts=2, dimse_backoff_s=0.0)
    down = f"dimse://ORTHANC@127.0.0.1:{free_port()}"
    with pytest.raises(SubmitError, match=re.escape(f"cannot list {down}") + ".*no connection.*after 2 attempts"):
        submit(SubmitRequest(source=down, run="down", variants=["raw"]), settings)
    wrong = "dimse://NOT-ORTHANC@127.0.0.1:4242"  # Orthanc checks the called AE title: a permanent rejection
    with pytest.raises(SubmitError, match=re.escape(f"cannot list {wrong}") + ".*Called AE title not recognised"):
        submit(SubmitRequest(source=wrong, run="wrong", variants=["raw"]), settings)
    stranger = embedded_settings(tmp_path, dimse_ae_title="STRANGER", dimse_attempts=1)  # not in DicomModalities
    with pytest.raises(SubmitError, match=r"aborted the association.*our AE title STRANGER"):
        submit(SubmitRequest(source=dimse_archive.url, run="stranger", variants=["raw"]), stranger)
    db = tmp_path / "pp.db"
    if db.exists():
        with sqlite3.connect(db) as conn:
            tables = {r[0] for r in conn.execute("select name from sqlite_master")}
            assert "runs" not in tables or conn.execute("select count(*) from runs").fetchone()[0] == 0


def test_failures_during_a_run_end_source_unavailable_then_retry_recovers(
    tmp_path: Path, dimse_archive: DimseArchive, dimse_proxy: TcpProxy
) -> None:
    from pixelperfect.cli.run import retry_failed

    files = archive_files(["explicit_le", "rle"], seed=63)
    for data in files:
        dimse_archive.upload(data)
    manifest = tmp_path / "keys.txt"
    manifest.write_text("\n".join(_key(d) for d in files))
    settings = embedded_settings(tmp_path, dimse_attempts=3, dimse_backoff_s=0.05)
    dimse_proxy.failing = True  # the archive is gone while the run fetches
    submit(SubmitRequest(source=dimse_proxy.url, run="flaky", variants=["raw"], manifest=str(manifest)), settings)
    assert set(_statuses(settings, "flaky").values()) == {("failed", "source_unavailable")}
    assert dimse_proxy.connections == 3 * len(files)  # each fetch tried dimse_attempts times, each time anew
    dimse_proxy.failing = False
    retry_failed("flaky", settings)
    assert set(_statuses(settings, "flaky").values()) == {("done", None)}


def test_gone_non_image_and_undecodable_instances_fail_with_their_reason(
    tmp_path: Path, dimse_archive: DimseArchive
) -> None:
    import pydicom
    from pydicom.encaps import encapsulate
    from pydicom.uid import UID

    good, gone, mpeg = archive_files(["explicit_le", "explicit_le", "explicit_le"], seed=64)
    ds = pydicom.dcmread(io.BytesIO(mpeg))  # a CR in MPEG-2 (no decoder here, and Orthanc cannot transcode it)
    ds.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.4.100")
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + bytes(400)])
    ds["PixelData"].VR = "OB"
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    seg = _seg(good)
    for data in (good, gone, buffer.getvalue(), seg):
        dimse_archive.upload(data)
    keys = [_key(d) for d in (good, gone, mpeg, seg)]
    manifest = tmp_path / "keys.txt"
    manifest.write_text("\n".join(keys))
    dimse_archive.delete_instance(_uids(gone)[2])  # between listing and fetch
    settings = embedded_settings(tmp_path)
    submit(SubmitRequest(source=dimse_archive.url, run="bad", variants=["raw"], manifest=str(manifest)), settings)
    statuses = _statuses(settings, "bad")
    assert [statuses[k] for k in keys] == [
        ("done", None), ("failed", "not_found"), ("failed", "missing_codec"), ("failed", "not_an_image"),
    ]  # fmt: skip
    with sqlite3.connect(settings.database_url.removeprefix("sqlite:///")) as conn:
        errors = dict(conn.execute("select key, error from images"))
    assert "Segmentation Storage" in errors[keys[3]] and "transfer syntax we decode" in errors[keys[2]]


def test_rsna_annotations_match_by_hashed_patient_id(tmp_path: Path, dimse_archive: DimseArchive) -> None:
    import pydicom

    files = archive_files(["explicit_le"] * 3, seed=65)
    for data in files:
        dimse_archive.upload(data)
    lines = ["patientId,x,y,width,height,Target"]
    for data in files:
        lines.append(f"{pydicom.dcmread(io.BytesIO(data)).PatientID},40,40,60,60,1")
    labels = tmp_path / "labels.csv"
    labels.write_text("\n".join(lines) + "\n")
    settings = embedded_settings(tmp_path)
    result = submit(
        SubmitRequest(
            source=dimse_archive.url,
            run="rsna",
            variants=["raw"],
            annotations=str(labels),
            filters=[f"StudyInstanceUID={','.join(sorted(dimse_archive.studies))}", "Modality=CR,DX"],
        ),
        settings,
    )
    assert result.annotated == 3
    assert set(_statuses(settings, "rsna").values()) == {("done", None)}
    dump = "\n".join(sqlite3.connect(tmp_path / "pp.db").iterdump())
    assert PHI["PatientID"] not in dump and "Doe^Jane" not in dump and PHI["PatientBirthDate"] not in dump


def test_c_store_records_each_refusal_and_retry_sends_refused_segs_again(
    tmp_path: Path, dimse_archive: DimseArchive, dimse_proxy: TcpProxy
) -> None:
    import pydicom

    from pixelperfect.worker.segretry import restow

    (source,) = archive_files(["explicit_le"], seed=66)
    dimse_archive.upload(source)
    seg = pydicom.dcmread(io.BytesIO(_seg(source)))
    odd = pydicom.dcmread(io.BytesIO(_seg(source)))
    odd.SOPClassUID = odd.file_meta.MediaStorageSOPClassUID = "1.2.3.4.5.6"  # a class the archive does not take
    odd.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    store = open_store(dimse_archive.url, Settings())
    refused = store.store([seg, odd])
    assert list(refused) == [str(odd.SOPInstanceUID)] and "not accepted" in refused[str(odd.SOPInstanceUID)]
    found = [e for e in store.entries({"StudyInstanceUID": [_uids(source)[0]]}) if not e.image]
    assert [e.key.rsplit("/", 1)[1] for e in found] == [str(seg.SOPInstanceUID)]

    # a run whose --stow-to archive is down: the SEG is built and stored, its send recorded as failed; retry sends it
    settings = embedded_settings(tmp_path, dimse_attempts=2, dimse_backoff_s=0.0)
    manifest = tmp_path / "keys.txt"
    manifest.write_text(_key(source))
    boxes = tmp_path / "boxes.csv"
    boxes.write_text(f"key,x1,y1,x2,y2\n{_uids(source)[2]},40,40,120,120\n")
    dimse_proxy.failing = True
    request = SubmitRequest(
        source=dimse_archive.url, run="sink", variants=["raw"], manifest=str(manifest), annotations=str(boxes),
        annotations_format="csv", outputs=["png,dicom-seg"], stow_to=dimse_proxy.url,
    )  # fmt: skip
    submit(request, settings)
    with sqlite3.connect(settings.database_url.removeprefix("sqlite:///")) as conn:
        rows = conn.execute("select sop_instance_uid, stow_status, stow_error from seg_objects").fetchall()
    assert len(rows) == 1 and rows[0][1] == "failed" and "after 2 attempts" in rows[0][2]
    dimse_proxy.failing = False
    report = restow("sink", settings)
    assert (report.stowed, report.stow_failed) == (1, 0)
    sent = [e for e in store.entries({"StudyInstanceUID": [_uids(source)[0]]}) if not e.image]
    assert rows[0][0] in {e.key.rsplit("/", 1)[1] for e in sent}


def test_c_store_groups_fit_the_context_limit_of_one_association() -> None:
    from types import SimpleNamespace

    from pixelperfect.storage.dimse import _context_groups

    def ds(sop_class: str, syntax: str) -> SimpleNamespace:
        return SimpleNamespace(SOPClassUID=sop_class, file_meta=SimpleNamespace(TransferSyntaxUID=syntax))

    many = [ds(f"1.2.3.{i}", "1.2.840.10008.1.2.1") for i in range(MAX_CONTEXTS + 5)]
    many += [ds("1.2.3.0", "1.2.840.10008.1.2.1")] * 3  # three objects of one pair: one context
    groups = list(_context_groups(many))
    assert [len(g) for g in groups] == [MAX_CONTEXTS, 5 + 3]
    assert [d for g in groups for d in g] == many
