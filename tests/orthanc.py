"""Orthanc (the PACS of the archive tests, started by scripts/services.sh), a fault-injecting proxy in front of it,
and phantom DICOM archives; its fixtures are registered in tests/conftest.py."""

from __future__ import annotations

import contextlib
import io
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import ROOT

ORTHANC = "http://127.0.0.1:8042"
DICOMWEB = f"dicomweb+{ORTHANC}/dicom-web"


def _up() -> bool:
    try:
        return requests.get(f"{ORTHANC}/system", timeout=2).ok
    except requests.RequestException:
        return False


@dataclass
class Orthanc:
    """The real Orthanc: ``url`` is its DICOMweb root as a PixelPerfect source URL; ``rest`` its own REST API."""

    url: str = DICOMWEB
    rest: str = ORTHANC
    studies_before: set[str] = field(default_factory=set)

    def stow_files(self, paths: list[Path]) -> None:
        import pydicom

        from pixelperfect.storage.dicomweb import DicomwebStore

        failed = DicomwebStore(self.url).store([pydicom.dcmread(p) for p in paths])
        assert not failed, failed

    def delete_instance(self, sop_uid: str) -> None:
        found = requests.post(f"{self.rest}/tools/lookup", data=sop_uid, timeout=10).json()
        assert found, f"no instance {sop_uid} in Orthanc"
        requests.delete(f"{self.rest}/instances/{found[0]['ID']}", timeout=10).raise_for_status()

    def studies(self) -> set[str]:
        return set(requests.get(f"{self.rest}/studies", timeout=10).json())


@pytest.fixture
def orthanc() -> Iterator[Orthanc]:
    """Orthanc on 127.0.0.1:8042 (started by scripts/services.sh if down); what a test stored is deleted after."""
    if not _up():
        subprocess.run(["bash", str(ROOT / "scripts" / "services.sh")], check=False, timeout=120)
    if not _up():
        pytest.fail("Orthanc is not running on 127.0.0.1:8042: run scripts/system-deps.sh and scripts/services.sh")
    server = Orthanc()
    server.studies_before = before = server.studies()
    yield server
    for study in server.studies() - before:
        requests.delete(f"{ORTHANC}/studies/{study}", timeout=30)


@pytest.fixture
def empty_orthanc(orthanc: Orthanc) -> Orthanc:
    """The test PACS emptied first, for a test that lists the whole archive: a run killed before its fixture's
    clean-up (an interrupted session, a CI job cut off) leaves studies behind that would otherwise join the run."""
    for study in orthanc.studies():
        requests.delete(f"{ORTHANC}/studies/{study}", timeout=30).raise_for_status()
    orthanc.studies_before = orthanc.studies()
    assert orthanc.studies_before == set(), orthanc.studies_before
    return orthanc


@dataclass
class OrthancProxy:
    """An HTTP proxy to Orthanc that answers ``status`` instead of forwarding while ``failing`` matches a path."""

    url: str
    failing: str | None = None  # substring of the request path that fails; None: forward everything
    status: int = 503
    hits: list[str] = field(default_factory=list)
    authorization: list[str] = field(default_factory=list)  # Authorization headers received


@pytest.fixture
def orthanc_proxy() -> Iterator[OrthancProxy]:
    state = OrthancProxy("")

    class Handler(BaseHTTPRequestHandler):
        def _relay(self) -> None:
            state.hits.append(self.path)
            state.authorization.append(self.headers.get("Authorization", ""))
            if state.failing is not None and state.failing in self.path:
                self.send_response(state.status)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
            resp = requests.request(self.command, ORTHANC + self.path, data=body, headers=headers, timeout=60)
            self.send_response(resp.status_code)
            for k, v in resp.headers.items():
                if k.lower() not in ("transfer-encoding", "content-length", "connection", "content-encoding"):
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(resp.content)))
            self.end_headers()
            self.wfile.write(resp.content)

        do_GET = do_POST = do_DELETE = _relay

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"dicomweb+http://127.0.0.1:{server.server_address[1]}/dicom-web"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


# --- phantom DICOM archives ---------------------------------------------------------------------------------

PHI = {"PatientName": "Doe^Jane^Secret", "PatientBirthDate": "19700402", "PatientID": "MRN-7734-SECRET"}


def dicom_phantoms(out: Path, n: int, seed: int, size: int = 256, *, phi: bool = False) -> list[Path]:
    """``n`` phantom DICOMs (CR and DX alternating) under ``out/images``; with ``phi`` each also carries a patient
    name, birth date and ID (``PHI`` values, the ID made unique per image) for hygiene tests. RSNA labels in
    ``out/labels.csv`` name images by the file stem; ``out/labels_pid.csv`` by the DICOM PatientID."""
    import pydicom

    from pixelperfect.synthetic.phantoms import write_phantoms

    write_phantoms(out, n, seed=seed, size=size, fmt="dicom")
    paths = sorted((out / "images").glob("*.dcm"))
    pids = {}
    for path in paths:
        ds = pydicom.dcmread(path)
        if phi:
            ds.PatientName, ds.PatientBirthDate = PHI["PatientName"], PHI["PatientBirthDate"]
            ds.PatientID = f"{PHI['PatientID']}-{path.stem}"
            ds.save_as(path, enforce_file_format=True)
        pids[path.stem] = str(ds.PatientID)
    lines = (out / "labels.csv").read_text().splitlines()
    renamed = [lines[0]] + [pids[line.split(",", 1)[0]] + "," + line.split(",", 1)[1] for line in lines[1:]]
    (out / "labels_pid.csv").write_text("\n".join(renamed) + "\n")
    return paths


# --- Orthanc's DICOM server (DIMSE) ---------------------------------------------------------------------------

DIMSE_PORT = 4242
DIMSE = f"dimse://ORTHANC@127.0.0.1:{DIMSE_PORT}"


def _dimse_up() -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", DIMSE_PORT), timeout=2):
            return True
    except OSError:
        return False


@dataclass
class DimseArchive:
    """The real Orthanc as a DIMSE archive (``url``), shared with other tests and sessions: a test stores through
    ``upload`` (Orthanc's REST API, the file's bytes as they are), filters by its own UIDs, and the fixture deletes
    the studies it stored (with the SEGs sent back into them), nothing else."""

    url: str = DIMSE
    rest: str = ORTHANC
    studies: set[str] = field(default_factory=set)  # StudyInstanceUIDs this test stored

    def upload(self, data: bytes) -> None:
        import pydicom

        self.studies.add(str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).StudyInstanceUID))
        requests.post(f"{self.rest}/instances", data=data, timeout=30).raise_for_status()

    def _lookup(self, uid: str, level: str) -> list[str]:
        found = requests.post(f"{self.rest}/tools/lookup", data=uid, timeout=10).json()
        return [f["ID"] for f in found if f["Type"] == level]

    def stored_file(self, sop_uid: str) -> bytes:
        """The file Orthanc holds for an instance, as it stored it."""
        (instance,) = self._lookup(sop_uid, "Instance")
        return requests.get(f"{self.rest}/instances/{instance}/file", timeout=30).content

    def delete_instance(self, sop_uid: str) -> None:
        for instance in self._lookup(sop_uid, "Instance"):
            requests.delete(f"{self.rest}/instances/{instance}", timeout=10).raise_for_status()

    def cleanup(self) -> None:
        for uid in self.studies:
            for study in self._lookup(uid, "Study"):
                requests.delete(f"{self.rest}/studies/{study}", timeout=30)


@pytest.fixture
def dimse_archive() -> Iterator[DimseArchive]:
    """Orthanc's DICOM server on 127.0.0.1:4242 (scripts/services.sh starts it, or restarts an Orthanc it started
    with an older configuration); the studies a test uploaded are deleted after."""
    if not (_up() and _dimse_up()):
        subprocess.run(["bash", str(ROOT / "scripts" / "services.sh")], check=False, timeout=120)
    if not _dimse_up():
        pytest.fail(
            f"no DICOM server on 127.0.0.1:{DIMSE_PORT}: an Orthanc that scripts/services.sh did not start is "
            "running without it; stop it and run scripts/services.sh"
        )
    archive = DimseArchive()
    yield archive
    archive.cleanup()


@dataclass
class TcpProxy:
    """A TCP relay to Orthanc's DICOM port; while ``failing`` it closes each new connection at once (an archive
    that went away) and cuts the open ones. ``connections`` counts the connections it accepted."""

    url: str = ""
    failing: bool = False
    connections: int = 0
    _open: list[Any] = field(default_factory=list)

    def fail(self) -> None:
        self.failing = True
        for sock in list(self._open):
            with contextlib.suppress(OSError):
                sock.shutdown(2)


@pytest.fixture
def dimse_proxy() -> Iterator[TcpProxy]:
    import select
    import socket

    state = TcpProxy()
    server = socket.create_server(("127.0.0.1", 0))
    state.url = f"dimse://ORTHANC@127.0.0.1:{server.getsockname()[1]}"
    stop = threading.Event()

    def relay(client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", DIMSE_PORT), timeout=10)
        except OSError:
            client.close()
            return
        state._open.extend([client, upstream])
        try:
            while not stop.is_set() and not state.failing:
                readable, _, _ = select.select([client, upstream], [], [], 0.2)
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    (upstream if sock is client else client).sendall(data)
        except OSError:
            return
        finally:
            for sock in (client, upstream):
                with contextlib.suppress(OSError):
                    sock.close()
                with contextlib.suppress(ValueError):
                    state._open.remove(sock)

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                client, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            state.connections += 1
            if state.failing:
                client.close()
                continue
            threading.Thread(target=relay, args=(client,), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield state
    stop.set()
    thread.join(5)
    server.close()


def archive_files(kinds: list[str], *, seed: int, shape: tuple[int, int] = (200, 240)) -> list[bytes]:
    """One small archive phantom per kind (``synthetic.archive_phantoms``: its transfer syntax; CR and DX
    alternating), each in a study of its own, with UIDs and a PatientID new to this call, so tests sharing
    Orthanc never meet each other's instances."""
    import pydicom
    from pydicom.uid import generate_uid

    from pixelperfect.synthetic.archive_phantoms import archive_phantom

    out = []
    for index, kind in enumerate(kinds):
        data, _ = archive_phantom(kind, index, seed=seed, shape=shape)
        ds = pydicom.dcmread(io.BytesIO(data))
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.PatientID = f"{PHI['PatientID']}-{generate_uid()[-12:]}"
        ds.PatientName, ds.PatientBirthDate = PHI["PatientName"], PHI["PatientBirthDate"]
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        out.append(buffer.getvalue())
    return out
