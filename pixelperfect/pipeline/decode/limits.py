"""Limits checked before any byte is inflated or any pixel decoded: what a hostile or broken file may declare.

A DICOM object is walked once, element by element, by :func:`precheck_dicom` before pydicom parses it: the walk reads
tags and lengths only (values are skipped by their length, never converted), counts elements and sequence nesting and,
for the deflated transfer syntax, inflates the dataset with a cap on the inflated bytes. It refuses:

================= =================================================================================================
inflate_limit     the deflated dataset inflates to more than ``max_inflated_bytes`` (a zlib bomb: 500 KB that
                  inflate to 512 MB), or its deflate stream is broken (``corrupt``)
too_deep          sequences nested deeper than ``max_sequence_depth`` (pydicom parses sequences recursively: a file
                  nested thousands deep would end in a ``RecursionError`` or exhaust memory)
too_many_elements more than ``max_elements`` data elements, all nesting levels together
================= =================================================================================================

Raster formats (PNG, JPEG, TIFF) and JPEG / JPEG 2000 codestreams inside DICOM are checked from their headers in
:mod:`.reader` and :mod:`.dicom` (``too_large``); :func:`frame_bytes_ok` bounds the bytes one DICOM frame declares.
Anything this walk does not understand (a truncated element, an unknown layout) is left to pydicom, which then names
the problem: the walk refuses only what it has proven to be over a limit.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from pixelperfect.pipeline.decode.image import DICOM_MAGIC_OFFSET, CorruptImageError, UnsupportedImageError

DEFLATED_SYNTAX = "1.2.840.10008.1.2.1.99"
EXPLICIT_BIG_SYNTAX = "1.2.840.10008.1.2.2"
IMPLICIT_LITTLE_SYNTAX = "1.2.840.10008.1.2"
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_PIXEL_DATA = 0x7FE00010
_INFLATE_CHUNK = 1 << 20
_TRANSFER_SYNTAX = 0x00020010
#: VRs with a 4-byte length after 2 reserved bytes in explicit VR (PS3.5 7.1.2)
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
_ALL_VRS = _LONG_VRS | frozenset(
    {b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"PN", b"SH", b"SL", b"SS",
     b"ST", b"TM", b"UI", b"UL", b"US"}
)  # fmt: skip


@dataclass(frozen=True)
class DecodeLimits:
    """The limits of one decode (``Settings``: ``max_inflated_bytes``, ``max_sequence_depth``, ``max_dicom_elements``).

    Defaults: 256 MiB inflated (a 50 Mpx 16-bit film is 100 MB; its dataset around it is KBs), 16 levels of
    sequence nesting (real objects nest 3-5: a SEG's segment sequences, a SR's content tree goes deeper, but SRs
    carry no pixels), 200,000 elements (a CR/DX header has a few hundred; an enhanced multi-frame one, ~10 per frame).
    """

    max_inflated_bytes: int = 256 * 1024 * 1024
    max_sequence_depth: int = 16
    max_elements: int = 200_000


DEFAULT_LIMITS = DecodeLimits()


class _Walk:
    """Counts elements while walking one dataset; raises at the first limit passed."""

    def __init__(self, buf: bytes, key: str, limits: DecodeLimits) -> None:
        self.buf, self.key, self.limits, self.elements = buf, key, limits, 0

    def dataset(self, pos: int, end: int, implicit: bool, little: bool, depth: int) -> int:
        """Walk elements from ``pos`` to ``end`` (an item's or the buffer's end; ``-1``: up to an item delimiter
        or the buffer's end); returns the position after the last element read."""
        buf = self.buf
        stop = len(buf) if end < 0 else min(end, len(buf))
        order = "<" if little else ">"
        while pos + 8 <= stop:
            group, elem = struct.unpack_from(order + "HH", buf, pos)
            tag = group << 16 | elem
            if tag in (_ITEM_END, _SEQUENCE_END):
                return pos + 8
            self.elements += 1
            if self.elements > self.limits.max_elements:
                raise UnsupportedImageError(
                    self.key, "too_many_elements", f"more than {self.limits.max_elements} data elements"
                )
            vr = buf[pos + 4 : pos + 6]
            if group == 0xFFFE:  # an item where an element belongs: not ours to judge
                return stop
            if implicit:
                vr, (length,), header = b"", struct.unpack_from(order + "I", buf, pos + 4), 8
            elif vr in _LONG_VRS:
                if pos + 12 > stop:
                    return stop
                (length,), header = struct.unpack_from(order + "I", buf, pos + 8), 12
            elif vr in _ALL_VRS:
                (length,), header = struct.unpack_from(order + "H", buf, pos + 6), 8
            else:
                return stop  # not explicit VR after all: pydicom decides
            pos += header
            if tag == _PIXEL_DATA and length == _UNDEFINED:
                pos = self._fragments(pos, stop, order)
            elif vr == b"SQ" or (length == _UNDEFINED and vr in (b"", b"UN")) or (implicit and _is_sequence(tag)):
                pos = self._sequence(pos, length, stop, implicit or vr == b"UN", little, depth + 1)
            elif length == _UNDEFINED:
                return stop  # undefined length on a plain element: pydicom decides
            else:
                pos += length
        return pos

    def _sequence(self, pos: int, length: int, stop: int, implicit: bool, little: bool, depth: int) -> int:
        if depth > self.limits.max_sequence_depth:
            raise UnsupportedImageError(
                self.key, "too_deep", f"sequences nested more than {self.limits.max_sequence_depth} deep"
            )
        end = stop if length == _UNDEFINED else min(stop, pos + length)
        order = "<" if little else ">"
        while pos + 8 <= end:
            group, elem, item_length = struct.unpack_from(order + "HHI", self.buf, pos)
            tag = group << 16 | elem
            pos += 8
            if tag == _SEQUENCE_END:
                return pos
            if tag != _ITEM:
                return stop  # not an item: pydicom decides
            self.elements += 1
            if self.elements > self.limits.max_elements:
                raise UnsupportedImageError(
                    self.key, "too_many_elements", f"more than {self.limits.max_elements} data elements"
                )
            if item_length == _UNDEFINED:
                pos = self.dataset(pos, -1 if length == _UNDEFINED else end, implicit, little, depth)
            else:
                self.dataset(pos, pos + item_length, implicit, little, depth)
                pos += item_length
        return pos if length == _UNDEFINED else end

    def _fragments(self, pos: int, stop: int, order: str) -> int:
        """Skip an encapsulated pixel data element's items (fragments are codestream bytes, not datasets)."""
        while pos + 8 <= stop:
            group, elem, length = struct.unpack_from(order + "HHI", self.buf, pos)
            pos += 8
            if (group << 16 | elem) == _SEQUENCE_END:
                return pos
            if length == _UNDEFINED:
                return stop
            pos += length
        return stop


def _is_sequence(tag: int) -> bool:
    """Implicit VR: a defined-length element is a sequence when the data dictionary says so."""
    from pydicom.datadict import dictionary_VR

    try:
        return str(dictionary_VR(tag)) == "SQ"
    except KeyError:
        return False


def _inflate(deflated: bytes, key: str, limit: int) -> bytes:
    """The deflated dataset inflated, once its inflated size is known to be within ``limit``: a first pass
    inflates it 1 MiB at a time and keeps nothing but the count, so that a bomb is refused having used 1 MiB."""
    inflater, rest, total = zlib.decompressobj(-zlib.MAX_WBITS), deflated, 0
    try:
        while rest:
            total += len(inflater.decompress(rest, _INFLATE_CHUNK))
            if total > limit:
                break
            rest = inflater.unconsumed_tail
        if total <= limit:  # all input taken: what zlib still holds is at most its 32 KiB window
            total += len(inflater.flush())
        if total <= limit:
            return zlib.decompress(deflated, -zlib.MAX_WBITS)
    except zlib.error as exc:
        raise CorruptImageError(key, "corrupt", f"the deflated dataset does not inflate: {exc}") from None
    raise UnsupportedImageError(
        key, "inflate_limit", f"the deflated dataset ({len(deflated)} bytes) inflates to more than {limit} bytes"
    )


def _meta_syntax(data: bytes) -> tuple[str | None, int]:
    """The transfer syntax UID of a Part 10 file's meta group and where the dataset starts (meta elements are
    explicit VR little endian)."""
    pos, syntax = DICOM_MAGIC_OFFSET + 4, None
    while pos + 8 <= len(data):
        group, elem = struct.unpack_from("<HH", data, pos)
        if group != 0x0002:
            break
        vr = data[pos + 4 : pos + 6]
        if vr in _LONG_VRS:
            if pos + 12 > len(data):
                break
            (length,), header = struct.unpack_from("<I", data, pos + 8), 12
        else:
            (length,), header = struct.unpack_from("<H", data, pos + 6), 8
        if length == _UNDEFINED:
            break
        if (group << 16 | elem) == _TRANSFER_SYNTAX:
            syntax = data[pos + header : pos + header + length].decode("ascii", "replace").strip(" \x00")
        pos += header + length
    return syntax, pos


def precheck_dicom(data: bytes, key: str, limits: DecodeLimits = DEFAULT_LIMITS) -> None:
    """Refuse a DICOM object (Part 10, or a bare dataset) that is over a limit of ``limits`` before pydicom reads
    it (see the module docstring). Returns nothing: a file within the limits is then read as usual."""
    if len(data) >= DICOM_MAGIC_OFFSET + 4 and data[DICOM_MAGIC_OFFSET : DICOM_MAGIC_OFFSET + 4] == b"DICM":
        syntax, start = _meta_syntax(data)
        body = data
        if syntax == DEFLATED_SYNTAX:
            body, start = _inflate(data[start:], key, limits.max_inflated_bytes), 0
        implicit, little = syntax == IMPLICIT_LITTLE_SYNTAX, syntax != EXPLICIT_BIG_SYNTAX
    else:  # no meta group: pydicom guesses the encoding from the first element; so do we
        body, start = data, 0
        implicit, little = data[4:6] not in _ALL_VRS, True
    _Walk(body, key, limits).dataset(start, len(body), implicit, little, 0)


def frame_bytes_ok(rows: int, columns: int, samples: int, bits_allocated: int, max_pixels: int) -> bool:
    """One frame's declared stored bytes (Rows x Columns x SamplesPerPixel x BitsAllocated / 8) within what
    ``max_pixels`` greyscale pixels of 32 bits may take: the bound every decode buffer of a frame stays under."""
    return rows * columns * max(samples, 1) * max(bits_allocated, 1) <= max_pixels * 32
