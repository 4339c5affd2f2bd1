"""The fuzz harnesses: one function per parser we own, ``bytes -> None``, each checking the contract of issue 30.

Every input either ends in a sane result (an image of a sane shape and dtype within ``MAX_PIXELS``, boxes of four
finite numbers, a mask of the image's shape, instances with their three UIDs) or in one of the documented errors
with a documented reason. Anything else raises :class:`Finding` or lets the unexpected exception through: both are
findings (for atheris, a crash; for the pytest replay, a failure). Hangs (over 2 s) and memory (over
:data:`RSS_LIMIT_MB`) are the campaign's to catch (``-timeout``/``-rss_limit_mb``, tests/fuzz/campaign.py).

No atheris here: the harnesses read their bytes with :class:`Bytes`, so that the pytest replay runs anywhere.
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Callable

import numpy as np

from pixelperfect.inputs.annotations import AnnotationError, match_to_keys, parse_annotations
from pixelperfect.pipeline.decode.image import DECODE_REASONS, ImageDecodeError
from pixelperfect.pipeline.decode.mask import decode_mask
from pixelperfect.pipeline.decode.reader import decode_image
from pixelperfect.storage.base import SourceUnavailableError, UnsupportedObjectError

#: The pixel limit of the decode harness: 4 Mpx (the default, 50 Mpx, would let one input take 400 MB legitimately
#: and slow each execution; the checks are the same code with another number).
MAX_PIXELS = 4_000_000
#: Memory one harness process may reach: the interpreter with numpy, OpenCV and pydicom (~250 MB) plus a few
#: buffers of MAX_PIXELS at up to 8 bytes (RGBA 16-bit) a pixel.
RSS_LIMIT_MB = 1024
SUFFIXES = (".dcm", ".png", ".jpg", ".tif", "", ".dicom", ".jpeg", ".bin")


class Finding(AssertionError):
    """An input broke a harness's contract."""


class Bytes:
    """Reads a fuzz input in pieces (a stand-in for atheris' FuzzedDataProvider that needs no atheris)."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def byte(self) -> int:
        value = self.data[self.pos] if self.pos < len(self.data) else 0
        self.pos += 1
        return value

    def take(self, n: int) -> bytes:
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def text(self, limit: int = 24) -> str:
        return self.take(self.byte() % (limit + 1)).decode("latin-1")

    def rest(self) -> bytes:
        out = self.data[self.pos :]
        self.pos = len(self.data)
        return out


# ---------------------------------------------------------------------------------------------------- decode


def check_image(decoded: object) -> None:
    pixels = decoded.pixels  # type: ignore[attr-defined]
    full = decoded.full_shape  # type: ignore[attr-defined]
    if pixels.ndim != 2 or pixels.dtype not in (np.uint8, np.uint16, np.float32):
        raise Finding(f"decoded to {pixels.dtype} {pixels.shape}")
    if min(pixels.shape) < 1 or full[0] * full[1] > MAX_PIXELS or pixels.size > MAX_PIXELS:
        raise Finding(f"decoded shape {pixels.shape} (full {full}) outside 1..{MAX_PIXELS} px")
    if pixels.dtype == np.float32 and not np.isfinite(pixels).all():
        raise Finding("float pixels that are not finite")


def check_reason(exc: ImageDecodeError) -> None:
    if exc.reason not in DECODE_REASONS:
        raise Finding(f"undocumented reason {exc.reason!r}: {exc}")


def decode(data: bytes) -> None:
    """The decode entry the workers call: first byte -> key suffix and reduced decode, the rest -> the object."""
    reader = Bytes(data)
    choice = reader.byte()
    key = "fuzz/input" + SUFFIXES[choice % len(SUFFIXES)]
    model_side = 64 if choice & 0x80 else None
    try:
        decoded = decode_image(reader.rest(), key, max_pixels=MAX_PIXELS, model_side=model_side)
    except ImageDecodeError as exc:
        check_reason(exc)
        return
    check_image(decoded)


# ------------------------------------------------------------------------------------------------ DICOM metadata
# Structured: a small valid film whose image attributes come from the input, written element by element (pydicom
# would validate the values we want malformed).

_PHOTOMETRIC = ("MONOCHROME2", "MONOCHROME1", "RGB", "PALETTE COLOR", "YBR_FULL", "")
_SYNTAXES = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.5")
_NUMBERS = ("1", "0", "-1", "0.5", "1e308", "-1e308", "nan", "inf", "4096", "2048\\4096", "", " ", "1\\2\\3", "0.1")


def _element(tag: int, vr: bytes, value: bytes, big: bool = False) -> bytes:
    order = ">" if big else "<"
    if len(value) % 2:
        value += b"\x00" if vr in (b"UI", b"OB", b"US", b"SS") else b" "
    head = struct.pack(order + "HH", tag >> 16, tag & 0xFFFF) + vr
    if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT", b"OF"):
        return head + b"\x00\x00" + struct.pack(order + "I", len(value)) + value
    return head + struct.pack(order + "H", len(value)) + value


def _number(reader: Bytes) -> bytes:
    pick = reader.byte()
    return (_NUMBERS[pick % len(_NUMBERS)] if pick < 200 else reader.text(16)).encode("latin-1")


def dicom_file(data: bytes) -> tuple[bytes, str]:
    """The film the metadata harness decodes, and its transfer syntax."""
    reader = Bytes(data)
    syntax = _SYNTAXES[reader.byte() % len(_SYNTAXES)] if reader.byte() % 4 == 0 else _SYNTAXES[0]
    big = syntax == "1.2.840.10008.1.2.2"
    rows, cols = 8 + reader.byte() % 25, 8 + reader.byte() % 25
    bits_allocated = (8, 16, 16, 32, 1, 12, 64)[reader.byte() % 7]
    bits_stored = reader.byte() % 40
    samples = (1, 1, 1, 3, 0, 4)[reader.byte() % 6]
    photometric = (_PHOTOMETRIC[reader.byte() % len(_PHOTOMETRIC)] if reader.byte() < 220 else reader.text(16)).encode()
    us = ">H" if big else "<H"
    elements: list[tuple[int, bytes, bytes]] = [
        (0x00080060, b"CS", b"DX"),
        (0x00280002, b"US", struct.pack(us, samples)),
        (0x00280004, b"CS", photometric),
        (0x00280010, b"US", struct.pack(us, rows)),
        (0x00280011, b"US", struct.pack(us, cols)),
        (0x00280100, b"US", struct.pack(us, bits_allocated)),
        (0x00280101, b"US", struct.pack(us, bits_stored)),
        (0x00280103, b"US", struct.pack(us, reader.byte() % 3)),
    ]
    flags = reader.byte() | reader.byte() << 8
    optional = [
        (0x00280008, b"IS"),  # NumberOfFrames
        (0x00280030, b"DS"),  # PixelSpacing
        (0x00181164, b"DS"),  # ImagerPixelSpacing
        (0x00181114, b"DS"),  # EstimatedRadiographicMagnificationFactor
        (0x00281050, b"DS"),  # WindowCenter
        (0x00281051, b"DS"),  # WindowWidth
        (0x00281052, b"DS"),  # RescaleIntercept
        (0x00281053, b"DS"),  # RescaleSlope
        (0x00281056, b"CS"),  # VOILUTFunction
        (0x00185101, b"CS"),  # ViewPosition
    ]
    for bit, (tag, vr) in enumerate(optional):
        if flags >> bit & 1:
            value = _number(reader) if vr != b"CS" else reader.text(16).encode("latin-1")
            elements.append((tag, vr, value))
    if flags >> 10 & 1:  # a VOI LUT Sequence: descriptor and data from the input
        descriptor = struct.pack(us[0] + "HHH", reader.byte() % 8, reader.byte(), (8, 16, 12, 0)[reader.byte() % 4])
        lut = reader.take(reader.byte() % 32)
        item = _element(0x00283002, b"US", descriptor, big) + _element(0x00283006, b"OW", lut, big)
        item_head = struct.pack((">" if big else "<") + "HHI", 0xFFFE, 0xE000, len(item))
        elements.append((0x00283010, b"SQ", item_head + item))
    frame_bytes = rows * cols * max(samples, 1) * max(bits_allocated, 8) // 8
    pixels = reader.rest()
    pixels = (pixels * (frame_bytes // max(len(pixels), 1) + 1))[:frame_bytes] if pixels else bytes(frame_bytes)
    if flags >> 11 & 1:  # pixel data of another length than declared
        pixels = pixels[: len(pixels) // 2]
    elements.append((0x7FE00010, b"OB" if bits_allocated <= 8 else b"OW", pixels))
    body = b"".join(_element(tag, vr, value, big) for tag, vr, value in sorted(elements))
    if syntax == "1.2.840.10008.1.2":  # implicit VR: tag, 4-byte length, value
        body = b"".join(
            struct.pack("<HHI", tag >> 16, tag & 0xFFFF, len(v := value + b"\x00" * (len(value) % 2))) + v
            for tag, _, value in sorted(elements)
        )
    uid = syntax.encode()
    meta_elements = _element(0x00020001, b"OB", b"\x00\x01") + _element(0x00020010, b"UI", uid)
    meta = _element(0x00020000, b"UL", struct.pack("<I", len(meta_elements))) + meta_elements
    return b"\x00" * 128 + b"DICM" + meta + body, syntax


def dicom_meta(data: bytes) -> None:
    """The DICOM metadata paths (spacing, VOI/LUT, photometric, bits, the fast-decoder choice) on a small film."""
    film, _ = dicom_file(data)
    frame = 0 if data[-1:] == b"\x01" else None
    try:
        decoded = decode_image(film, "fuzz/meta.dcm", max_pixels=MAX_PIXELS, frame=frame, colour_to_grey=True)
    except ImageDecodeError as exc:
        check_reason(exc)
        return
    check_image(decoded)
    json.dumps(decoded.meta)  # the image row stores it as JSON


# ------------------------------------------------------------------------------------------------- annotations


def annotations(data: bytes) -> None:
    """Annotation import: RSNA labels or a box CSV, then the matching to image keys."""
    fmt = "rsna" if data[:1] < b"\x80" else "csv"
    text = data[1:].decode("utf-8", "replace")
    try:
        boxes = parse_annotations(text, fmt, "fuzz.csv")
    except AnnotationError:
        return
    for ident, rows in boxes.items():
        if not isinstance(ident, str) or not ident:
            raise Finding(f"identifier {ident!r}")
        for box in rows:
            if len(box) != 4 or not all(np.isfinite(box)) or box[2] < box[0] or box[3] < box[1]:
                raise Finding(f"box {box!r} of {ident!r}")
    match_to_keys(boxes, [f"images/{ident}.dcm" for ident in list(boxes)[:4]] + ["images/x.png"])


def mask(data: bytes) -> None:
    """Ground-truth mask import: bytes and the image's (H, W) -> a bool mask of that shape, or ValueError."""
    reader = Bytes(data)
    shape = (1 + reader.byte() % 64, 1 + reader.byte() % 64)
    try:
        out = decode_mask(reader.rest(), shape)
    except ValueError:
        return
    if out.dtype != np.bool_ or out.shape != shape:
        raise Finding(f"mask {out.dtype} {out.shape} for {shape}")


# -------------------------------------------------------------------------------------------------- DICOMweb


class _Adapter:
    """A requests transport adapter answering every request with the fuzz input (status 200)."""

    def __init__(self, body: bytes, content_type: str) -> None:
        self.body, self.content_type = body, content_type

    def send(self, request: object, **kwargs: object) -> object:
        import requests

        response = requests.Response()
        response.status_code = 200
        response._content = self.body
        response.headers["Content-Type"] = self.content_type
        response.url = request.url  # type: ignore[attr-defined]
        response.request = request  # type: ignore[assignment]
        response.encoding = "utf-8"
        return response

    def close(self) -> None:
        pass


_STORE: list[object] = []


def _dicomweb_store() -> object:
    if not _STORE:
        from pixelperfect.config import Settings
        from pixelperfect.storage.dicomweb import DicomwebStore

        settings = Settings(dicomweb_attempts=1, dicomweb_page_size=1000)
        _STORE.append(DicomwebStore("dicomweb+http://fuzz.invalid/dicom-web", settings))
    return _STORE[0]


BOUNDARY = "fuzzboundary"
KEY = "1.2/3.4/5.6"


def dicomweb(data: bytes) -> None:
    """DICOMweb responses: a QIDO-RS page (JSON) or a WADO-RS multipart body, answered by a transport adapter
    through the real client and store code (first byte: which)."""
    store = _dicomweb_store()
    body = data[1:]
    if data[:1] < b"\x80":
        store.session.mount("http://", _Adapter(body, "application/dicom+json"))  # type: ignore[attr-defined]
        try:
            found = list(store.instances())  # type: ignore[attr-defined]
        except SourceUnavailableError:
            return
        except (ValueError, UnicodeDecodeError):  # the client's JSON decoding: a body that is no JSON at all
            return
        for instance in found:
            if instance.key.count("/") < 2:
                raise Finding(f"instance key {instance.key!r}")
        return
    media = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
    store.session.mount("http://", _Adapter(body, media))  # type: ignore[attr-defined]
    try:
        out = store.get(KEY)  # type: ignore[attr-defined]
    except (UnsupportedObjectError, SourceUnavailableError):
        return
    if out[128:132] != b"DICM":
        raise Finding("WADO-RS get returned no Part 10 file")


def wado_body(part: bytes) -> bytes:
    """A multipart/related body holding one part (for the seeds)."""
    head = f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    return head + part + f"\r\n--{BOUNDARY}--\r\n".encode()


_FIND_KEYS = ("Modality", "BodyPartExamined", "StudyDescription", "PatientID", "SOPClassUID", "ViewPosition")


def dimse(data: bytes) -> None:
    """C-FIND answers as pynetdicom hands them over (an identifier dataset decoded from the archive's bytes,
    implicit VR little endian): the three UIDs of a key, the SOP class, and the match against a ``--filter`` value
    (first byte: which keyword; the next up to 16: the pattern, ``*`` and ``?`` wildcards)."""
    from pydicom.filereader import read_dataset

    from pixelperfect.storage.dicomkeys import is_image_sop_class
    from pixelperfect.storage.dimse import _answer_matches, answer_uid

    reader = Bytes(data)
    keyword = _FIND_KEYS[reader.byte() % len(_FIND_KEYS)]
    pattern = reader.text(16)
    try:  # pynetdicom's decoding of the identifier: bytes it cannot read never reach us
        answer = read_dataset(io.BytesIO(reader.rest()), True, True)
    except Exception:
        return
    for uid_keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "PatientID"):
        uid = answer_uid(answer, uid_keyword)
        if uid is not None and (not isinstance(uid, str) or not uid):
            raise Finding(f"{uid_keyword} {uid!r}")
    is_image_sop_class(answer_uid(answer, "SOPClassUID"))
    if not isinstance(_answer_matches(answer, {keyword: pattern}), bool):
        raise Finding("a match that is no bool")


HARNESSES: dict[str, Callable[[bytes], None]] = {
    "decode": decode,
    "dicom_meta": dicom_meta,
    "annotations": annotations,
    "mask": mask,
    "dicomweb": dicomweb,
    "dimse": dimse,
}


def warm_up(name: str) -> None:
    """Import and compile what loads on first use (pydicom's dictionaries and pixel plugins, the numba gather of
    :mod:`~pixelperfect.pipeline.decode.voi` per table and index type) by running harness ``name``'s seeds once, so
    that a campaign's 2 s limit measures inputs, not imports or the JIT (a worker pays them once)."""
    import pydicom.datadict  # noqa: F401

    from pixelperfect.pipeline.decode.voi import look_up
    from tests.fuzz.seeds import seeds

    for _, data in seeds(name):
        run_one(name, data)

    for table_type in (np.uint8, np.float32):
        for index_type in (np.uint8, np.uint16):
            look_up(np.zeros(2 ** (8 * np.dtype(index_type).itemsize), table_type), np.zeros((4, 4), index_type))


def run_one(name: str, data: bytes) -> None:
    """One input through harness ``name``; warnings and logs stay quiet."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        HARNESSES[name](data)


__all__ = ["HARNESSES", "MAX_PIXELS", "Finding", "io", "run_one", "wado_body"]
