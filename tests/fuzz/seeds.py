"""The seed corpora of the fuzz harnesses, built from scratch (nothing of it in git): small archive phantoms in every
transfer syntax, pydicom's bundled test files, the bad-input corpus of the fault tests, masks, annotation files and
DICOMweb responses. ``seeds(name)`` returns ``[(label, bytes)]``; ``write(folder)`` writes one folder per harness.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import cv2
import numpy as np

from tests.fuzz.harnesses import HARNESSES, SUFFIXES, wado_body

#: pydicom's bundled test files that are small greyscale images or broken ones (the rest are colour or large)
PYDICOM_FILES = (
    "CT_small.dcm",
    "MR_small.dcm",
    "JPEG2000.dcm",
    "MR_small_RLE.dcm",
    "JPEG-LL.dcm",
    "rtplan.dcm",
    "no_meta.dcm",
    "emri_small_jpeg_2k_lossless.dcm",
    "image_dfl.dcm",
    "nested_priv_SQ.dcm",
    "meta_missing_tsyntax.dcm",
)
SEED_SIDE = (64, 56)  # rows x columns of the phantoms (64: the smallest phantom): thousands of executions a second


@functools.lru_cache(maxsize=1)
def _phantoms() -> tuple[tuple[str, bytes], ...]:
    from pixelperfect.synthetic.archive_phantoms import ARCHIVE_KINDS, archive_phantom, encoder_missing

    out = []
    for index, (name, kind) in enumerate(ARCHIVE_KINDS.items()):
        if encoder_missing(kind) is None:
            out.append((f"phantom-{name}", archive_phantom(kind, index, shape=SEED_SIDE)[0]))
    return tuple(out)


def _pydicom_files() -> list[tuple[str, bytes]]:
    from pydicom.data import get_testdata_file

    out = []
    for name in PYDICOM_FILES:
        path = get_testdata_file(name, download=False)
        if path and Path(str(path)).stat().st_size <= 64_000:
            out.append((f"pydicom-{name}", Path(str(path)).read_bytes()))
    return out


def _rasters() -> list[tuple[str, bytes]]:
    y, x = np.mgrid[0:40, 0:48]
    grey = ((x * 5 + y * 3) % 256).astype(np.uint8)
    out = []
    for ext in (".png", ".jpg", ".tif"):
        for image in (grey, (grey.astype(np.uint16) * 257)):
            if ext == ".jpg" and image.dtype == np.uint16:
                continue
            ok, buf = cv2.imencode(ext, image)
            assert ok
            out.append((f"raster-{image.dtype}{ext}", buf.tobytes()))
    return out


def _bad_inputs() -> list[tuple[str, bytes]]:
    from tests.faults.corpus import bad_corpus

    return [(f"bad-{name}", data) for name, data, _ in bad_corpus() if len(data) <= 64_000]


def _prefixed(label: str, data: bytes) -> tuple[str, bytes]:
    """A decode seed: the first byte picks the key suffix (``.dcm`` for DICOM, the raster's own otherwise)."""
    ext = "." + label.rsplit(".", 1)[-1] if "." in label else ".dcm"
    choice = SUFFIXES.index(ext) if ext in SUFFIXES else 0
    return label, bytes([choice]) + data


def seeds(name: str) -> list[tuple[str, bytes]]:
    """The seed inputs of harness ``name``."""
    if name == "decode":
        files = [*_phantoms(), *_pydicom_files(), *_rasters(), *_bad_inputs()]
        return [_prefixed(label, data) for label, data in files]
    if name == "dicom_meta":
        import hashlib

        out = []
        for i in range(24):  # varied attribute choices; each input is itself a film description
            seed = hashlib.sha256(f"meta-{i}".encode()).digest() * 2
            out.append((f"meta-{i}", bytes([0, 0, 24, 24, 1, 0, 0, 0, 0, 0, i * 37 % 256, i % 8]) + seed))
        return out
    if name == "annotations":
        rsna = "patientId,x,y,width,height,Target\nabc,10,20,30,40,1\nabc,1,2,3,4,1\ndef,,,,,0\n"
        boxes = "key,x1,y1,x2,y2\nimages/a.png,1,2,30,40\nimages/b.dcm,0,0,5.5,6\n"
        return [("rsna", b"\x00" + rsna.encode()), ("csv", b"\xff" + boxes.encode()), ("empty", b"\x00")]
    if name == "mask":
        mask = np.zeros((24, 32), np.uint8)
        mask[4:20, 6:26] = 255
        out = []
        for ext in (".png", ".tif", ".bmp"):
            ok, buf = cv2.imencode(ext, mask)
            assert ok
            out.append((f"mask{ext}", bytes([24 - 1, 32 - 1]) + buf.tobytes()))
        return out
    if name == "dicomweb":
        item = {
            "0020000D": {"vr": "UI", "Value": ["1.2"]},
            "0020000E": {"vr": "UI", "Value": ["3.4"]},
            "00080018": {"vr": "UI", "Value": ["5.6"]},
            "00080016": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.1.1"]},
            "00080060": {"vr": "CS", "Value": ["DX"]},
            "00100020": {"vr": "LO", "Value": ["PID"]},
        }
        out = [("qido", b"\x00" + json.dumps([item, item]).encode()), ("qido-empty", b"\x00[]")]
        for label, data in _phantoms()[:3]:
            out.append((f"wado-{label}", b"\xff" + wado_body(data)))
        return out
    if name == "dimse":
        from pydicom.dataset import Dataset
        from pydicom.filebase import DicomBytesIO
        from pydicom.filewriter import write_dataset

        out = []
        for i, (modality, sop_class) in enumerate(
            (("DX", "1.2.840.10008.5.1.4.1.1.1.1"), ("SR", "1.2.840.10008.5.1.4.1.1.88.22"))
        ):
            answer = Dataset()
            answer.QueryRetrieveLevel = "IMAGE"
            answer.StudyInstanceUID, answer.SeriesInstanceUID, answer.SOPInstanceUID = "1.2", "3.4", f"5.{i}"
            answer.SOPClassUID, answer.Modality, answer.PatientID = sop_class, modality, "PID"
            buffer = DicomBytesIO()
            buffer.is_little_endian, buffer.is_implicit_VR = True, True
            write_dataset(buffer, answer)
            out.append((f"find-{modality}", bytes([0, 2]) + b"D*" + buffer.getvalue()))
        out.append(("find-no-uids", bytes([1, 1]) + b"*" + out[0][1][4:40]))  # cut after the SOP class
        return out
    raise KeyError(name)


def write(folder: Path, names: list[str] | None = None) -> dict[str, int]:
    """Write each harness's seeds under ``folder/<harness>/``; returns the count per harness."""
    counts = {}
    for name in names or list(HARNESSES):
        target = Path(folder) / name
        target.mkdir(parents=True, exist_ok=True)
        items = seeds(name)
        for label, data in items:
            (target / f"seed-{label}").write_bytes(data)
        counts[name] = len(items)
    return counts
