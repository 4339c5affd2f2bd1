"""The common compressed radiograph read without pydicom's dataset machinery: a single-frame JPEG (baseline or
extended) DICOM file, as RSNA's and many archives' films are stored.

pydicom spends ~0.5 ms per file building its dataset and converting the values the decode reads, a third of a
1024² JPEG's decode. :func:`read_simple` walks the file's elements once and keeps only what the decode reads, with
the values pydicom would give them, behind the part of pydicom's ``Dataset`` interface that the decode uses
(``get``, ``in``, attribute access, ``ds[keyword].value``, ``file_meta.TransferSyntaxUID``).

It takes only the plain case and returns ``None`` for anything else, so that pydicom reads it: a Part 10 file
(preamble, ``DICM``, explicit VR little endian meta group), a JPEG transfer syntax, top-level elements of defined
length or sequences (skipped, to their delimiter when of undefined length; a Modality or VOI LUT Sequence means
``None``), encapsulated pixel data that ends the file, and every value the decode reads present, non-empty, of its
standard VR, single-valued where the decode expects one value, printable ASCII text, numbers in DICOM's own
grammar. :mod:`~pixelperfect.pipeline.decode.dicom` checks the rest (size, frames, photometric) as for any file and
falls back to pydicom for the file whenever this path does not end in a decoded image; tests compare both paths' pixels
and metadata.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import Any

from pixelperfect.pipeline.decode import codecs

#: The elements the decode reads: keyword -> (tag, VR, several values allowed).
ELEMENTS: dict[str, tuple[int, str, bool]] = {
    "AccessionNumber": (0x00080050, "SH", False),
    "Modality": (0x00080060, "CS", False),
    "PatientID": (0x00100020, "LO", False),
    "BodyPartExamined": (0x00180015, "CS", False),
    "EstimatedRadiographicMagnificationFactor": (0x00181114, "DS", False),
    "ImagerPixelSpacing": (0x00181164, "DS", True),
    "ViewPosition": (0x00185101, "CS", False),
    "StudyInstanceUID": (0x0020000D, "UI", False),
    "SamplesPerPixel": (0x00280002, "US", False),
    "PhotometricInterpretation": (0x00280004, "CS", False),
    "NumberOfFrames": (0x00280008, "IS", False),
    "Rows": (0x00280010, "US", False),
    "Columns": (0x00280011, "US", False),
    "PixelSpacing": (0x00280030, "DS", True),
    "BitsAllocated": (0x00280100, "US", False),
    "BitsStored": (0x00280101, "US", False),
    "PixelRepresentation": (0x00280103, "US", False),
    "WindowCenter": (0x00281050, "DS", True),
    "WindowWidth": (0x00281051, "DS", True),
    "RescaleIntercept": (0x00281052, "DS", False),
    "RescaleSlope": (0x00281053, "DS", False),
    "VOILUTFunction": (0x00281056, "CS", False),
}
_BY_TAG = {tag: (keyword, vr, multi) for keyword, (tag, vr, multi) in ELEMENTS.items()}
#: Elements whose presence means pydicom's path: LUTs (pydicom applies them), other pixel data.
_REFUSED = {0x00283000, 0x00283010, 0x7FE00008, 0x7FE00009}
_PIXEL_DATA = 0x7FE00010
_TRANSFER_SYNTAX = 0x00020010
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
#: VRs with a 2-byte reserved field and a 4-byte length in explicit VR.
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_SHORT_VRS = (b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"PN", b"SH",
              b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US")  # fmt: skip
_VRS = _LONG_VRS | set(_SHORT_VRS)
_DS = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
_IS = re.compile(r"[+-]?\d+")
_UNDEFINED = 0xFFFFFFFF


@dataclass(frozen=True)
class _Element:
    value: Any


@dataclass(frozen=True)
class _FileMeta:
    TransferSyntaxUID: str  # pydicom's keyword


class SimpleDataset:
    """The decoded values of a simple file (module docstring): read-only, pydicom's interface for them, ``frame``:
    the frame's codestream (its fragments joined, as pydicom's ``get_frame`` gives a single frame)."""

    def __init__(self, syntax: str, values: dict[str, Any], frame: bytes) -> None:
        self.file_meta = _FileMeta(syntax)
        self._values = values
        self.frame = frame

    def __contains__(self, keyword: object) -> bool:
        return keyword in self._values or keyword == "PixelData"

    def get(self, keyword: str, default: Any = None) -> Any:
        return self._values.get(keyword, default)

    def __getattr__(self, keyword: str) -> Any:
        values = self.__dict__.get("_values", {})
        if keyword in values:
            return values[keyword]
        raise AttributeError(keyword)

    def __getitem__(self, keyword: str) -> _Element:
        return _Element(self._values[keyword])

    def get_item(self, keyword: str) -> _Element:
        return self[keyword]

    def __len__(self) -> int:
        return len(self._values) + 1  # and the pixel data


def read_simple(data: bytes) -> SimpleDataset | None:
    """The file's values and frame when it is the plain case of the module docstring, else ``None``."""
    if len(data) < 144 or data[128:132] != b"DICM":
        return None
    try:
        return _read(data)
    except (struct.error, UnicodeDecodeError, ValueError, IndexError):
        return None


def _read(data: bytes) -> SimpleDataset | None:
    unpack = struct.unpack_from
    end = len(data)
    pos, last = 132, -1
    syntax: str | None = None
    values: dict[str, Any] = {}
    while pos + 8 <= end:
        group, number = unpack("<HH", data, pos)
        tag = (group << 16) | number
        if tag <= last:  # elements out of order: not a plain file
            return None
        last = tag
        vr = data[pos + 4 : pos + 6]
        if vr not in _VRS:
            return None
        if vr in _LONG_VRS:
            (length,) = unpack("<I", data, pos + 8)
            start = pos + 12
        else:
            (length,) = unpack("<H", data, pos + 6)
            start = pos + 8
        if tag == _PIXEL_DATA:
            frame = _fragments(data, start) if vr == b"OB" and length == _UNDEFINED else None
            if frame is None or syntax is None or syntax not in codecs.JPEG_SYNTAXES:
                return None
            return SimpleDataset(syntax, values, frame)
        if tag in _REFUSED:
            return None
        if length == _UNDEFINED:  # a sequence of undefined length: walked to its delimiter
            after = _skip_sequence(data, start, 0) if vr == b"SQ" else None
            if after is None:
                return None
            pos = after
            continue
        if start + length > end:
            return None
        raw = data[start : start + length]
        if tag == _TRANSFER_SYNTAX:
            syntax = _text(raw)
        elif group != 0x0002 and syntax not in codecs.JPEG_SYNTAXES:  # the dataset of another syntax: pydicom's
            return None
        elif tag in _BY_TAG:
            keyword, expected, multi = _BY_TAG[tag]
            values[keyword] = _value(raw, vr.decode(), expected, multi)
        pos = start + length
    return None  # no pixel data


class _NotPlain(ValueError):
    """A value pydicom may read otherwise than plainly: the file goes to pydicom."""


def _value(raw: bytes, vr: str, expected: str, multi: bool) -> Any:
    """``raw`` as pydicom gives a value of VR ``expected``: US -> int, IS -> int, DS -> float (a list of floats
    when ``multi`` and several), text -> str without padding (``""`` when empty, as pydicom's); raises
    :class:`_NotPlain` for another VR, an empty number, several values where one is expected, bytes that are not
    printable ASCII, or numbers outside DICOM's grammar."""
    if vr != expected:
        raise _NotPlain(f"VR {vr}, not {expected}")
    if vr == "US":
        if len(raw) != 2:  # empty, or several values
            raise _NotPlain("not one US value")
        return struct.unpack("<H", raw)[0]
    text = _text(raw)
    if text is None:
        raise _NotPlain("not printable ASCII")
    if vr not in ("DS", "IS"):
        if "\\" in text:
            raise _NotPlain("several text values")
        return text
    parts = [part.strip(" ") for part in text.split("\\")]
    grammar = _DS if vr == "DS" else _IS
    if (len(parts) > 1 and not multi) or not all(grammar.fullmatch(part) for part in parts):
        raise _NotPlain(f"not a plain {vr} value")
    if vr == "IS":
        return int(parts[0])
    numbers = [float(part) for part in parts]
    return numbers if len(numbers) > 1 else numbers[0]


def _text(raw: bytes) -> str | None:
    """Printable ASCII without DICOM's padding (spaces, a trailing NUL), else ``None`` (a character set's bytes:
    pydicom decodes those)."""
    text = raw.decode("ascii")
    if not text.isprintable():
        text = text.rstrip("\x00")
        if not text.isprintable():
            return None
    return text.strip(" ")


def _skip_sequence(data: bytes, pos: int, depth: int) -> int | None:
    """Where a sequence of undefined length whose items start at ``pos`` ends (after its delimiter); items of
    either length, their elements in explicit VR, nested sequences likewise; ``None`` for anything else."""
    unpack = struct.unpack_from
    end = len(data)
    if depth > 8:
        return None
    while pos + 8 <= end:
        group, number, length = unpack("<HHI", data, pos)
        tag = (group << 16) | number
        pos += 8
        if tag == _SEQUENCE_END:
            return pos if length == 0 else None
        if tag != _ITEM:
            return None
        if length != _UNDEFINED:
            pos += length
            continue
        while True:  # an item of undefined length: its elements up to the item delimiter
            if pos + 8 > end:
                return None
            group, number = unpack("<HH", data, pos)
            if (group << 16) | number == _ITEM_END:
                pos += 8
                break
            vr = data[pos + 4 : pos + 6]
            if vr in _LONG_VRS:
                (length,) = unpack("<I", data, pos + 8)
                pos += 12
            elif vr in _VRS:
                (length,) = unpack("<H", data, pos + 6)
                pos += 8
            else:
                return None
            if length == _UNDEFINED:
                after = _skip_sequence(data, pos, depth + 1) if vr == b"SQ" else None
                if after is None:
                    return None
                pos = after
            else:
                pos += length
    return None


def _fragments(data: bytes, pos: int) -> bytes | None:
    """The fragments of encapsulated pixel data starting at ``pos`` (its basic offset table), joined: the one frame,
    as pydicom's ``get_frame`` gives it; ``None`` unless the offset table is empty or the single offset 0 and the
    sequence delimiter ends the file."""
    unpack = struct.unpack_from
    end = len(data)
    fragments: list[bytes] = []
    first = True
    while pos + 8 <= end:
        group, number, length = unpack("<HHI", data, pos)
        tag = (group << 16) | number
        pos += 8
        if tag == _SEQUENCE_END:
            return b"".join(fragments) if fragments and length == 0 and pos == end else None
        if tag != _ITEM or length == _UNDEFINED or pos + length > end:
            return None
        if not first:
            fragments.append(data[pos : pos + length])
        elif length not in (0, 4) or data[pos : pos + length].strip(b"\x00"):  # offsets of more than one frame
            return None
        first = False
        pos += length
    return None
