"""Decompression bombs and absurd headers, built from scratch, each with what it declares and the reason it must end
in. ``python -m tests.fuzz.bombs [NAME ...]`` decodes each in a forked child whose address space may grow by
:data:`MEMORY_LIMIT_MB` over the interpreter's (``RLIMIT_AS``) and whose time is :data:`TIME_LIMIT_S`; it prints one
JSON line per bomb: ``name``, ``reason`` (or ``crash``), ``seconds`` to refuse it. The tests and ``bench/run.py``
(P-line) run it; a bomb that got past the checks cannot take their process down.
"""

from __future__ import annotations

import io
import json
import os
import resource
import signal
import struct
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass

MEMORY_LIMIT_MB = 200
TIME_LIMIT_S = 20


@dataclass(frozen=True)
class Bomb:
    name: str
    key: str
    build: Callable[[], bytes]
    declared: str  # what the file declares or inflates to
    reason: str


def _meta(syntax: str) -> bytes:
    def element(tag: int, vr: bytes, value: bytes) -> bytes:
        if len(value) % 2:
            value += b"\x00"
        return struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr + struct.pack("<H", len(value)) + value

    body = element(0x00020010, b"UI", syntax.encode())
    body = struct.pack("<HH", 2, 1) + b"OB\x00\x00" + struct.pack("<I", 2) + b"\x00\x01" + body
    return b"\x00" * 128 + b"DICM" + element(0x00020000, b"UL", struct.pack("<I", len(body))) + body


def _explicit(tag: int, vr: bytes, value: bytes) -> bytes:
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr
    if vr in (b"OB", b"OW", b"SQ", b"UN"):
        return head + b"\x00\x00" + struct.pack("<I", len(value)) + value
    return head + struct.pack("<H", len(value)) + value


def _image_elements(rows: int = 64, cols: int = 64, bits: int = 8) -> bytes:
    us = lambda v: struct.pack("<H", v)  # noqa: E731
    return b"".join(
        (
            _explicit(0x00280002, b"US", us(1)),
            _explicit(0x00280004, b"CS", b"MONOCHROME2 "),
            _explicit(0x00280010, b"US", us(rows)),
            _explicit(0x00280011, b"US", us(cols)),
            _explicit(0x00280100, b"US", us(bits)),
            _explicit(0x00280101, b"US", us(bits)),
            _explicit(0x00280103, b"US", us(0)),
        )
    )


def deflate_bomb(inflated_mb: int = 512) -> bytes:
    """A deflated-syntax DICOM whose dataset inflates to ``inflated_mb`` MiB (a private OB element of zeros), built
    1 MiB at a time: ~500 KB on disk."""
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    size = inflated_mb << 20
    head = _image_elements() + struct.pack("<HH", 0x0009, 0x1010) + b"OB\x00\x00" + struct.pack("<I", size)
    parts = [packer.compress(head)]
    chunk = bytes(1 << 20)
    parts += [packer.compress(chunk) for _ in range(inflated_mb)]
    parts.append(packer.flush())
    return _meta("1.2.840.10008.1.2.1.99") + b"".join(parts)


def nested_sequences(depth: int = 10_000) -> bytes:
    """Explicit VR LE, a sequence of undefined length holding an item holding a sequence ... ``depth`` deep."""
    open_level = struct.pack("<HH", 0x0040, 0xA730) + b"SQ\x00\x00" + struct.pack("<I", 0xFFFFFFFF)
    open_level += struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
    close_level = struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    pixels = _explicit(0x7FE00010, b"OB", bytes(64 * 64))
    return _meta("1.2.840.10008.1.2.1") + _image_elements() + open_level * depth + close_level * depth + pixels


def many_elements(count: int = 1_000_000) -> bytes:
    """``count`` tiny private elements before the image (8 bytes each)."""
    element = struct.pack("<HH", 0x0009, 0x1001) + b"SH" + struct.pack("<H", 0)
    pixels = _explicit(0x7FE00010, b"OB", bytes(64 * 64))
    return _meta("1.2.840.10008.1.2.1") + element * count + _image_elements() + pixels


def dicom_claiming(rows: int, cols: int, bits: int = 16) -> bytes:
    """Native pixel data of 64 bytes under Rows x Columns of ``rows`` x ``cols``."""
    return _meta("1.2.840.10008.1.2.1") + _image_elements(rows, cols, bits) + _explicit(0x7FE00010, b"OW", bytes(64))


def j2k_claiming(side: int = 65000) -> bytes:
    """A JPEG 2000 lossless DICOM of 64 x 56 whose codestream's SIZ marker declares ``side`` x ``side``."""
    from pixelperfect.synthetic.archive_phantoms import archive_phantom

    data = bytearray(archive_phantom("j2k_lossless", 0, shape=(64, 56))[0])
    siz = data.find(b"\xff\x4f\xff\x51")
    data[siz + 8 : siz + 16] = struct.pack(">II", side, side)  # Xsiz, Ysiz
    return bytes(data)


def _png(width: int, height: int) -> bytes:
    from tests.faults.corpus import png_claiming

    return png_claiming(width, height)


def _raster(kind: str, side: int) -> bytes:
    from tests.faults import corpus

    return {"jpeg": corpus.jpeg_claiming, "tiff": corpus.tiff_claiming}[kind](side, side)


def png_zlib_bomb() -> bytes:
    """A real 10,000² 8-bit PNG (100 MB of pixels, ~100 KB on disk)."""
    from tests.faults.corpus import png_bomb

    return png_bomb(10_000)


BOMBS = {
    b.name: b
    for b in (
        Bomb("deflate-512MiB", "bomb.dcm", deflate_bomb, "inflates to 512 MiB", "inflate_limit"),
        Bomb("nested-10000", "bomb.dcm", nested_sequences, "sequences 10,000 deep", "too_deep"),
        Bomb("elements-1M", "bomb.dcm", many_elements, "1,000,000 elements", "too_many_elements"),
        Bomb("dicom-65000sq", "bomb.dcm", lambda: dicom_claiming(65000, 65000), "65,000² x 16 bits", "too_large"),
        Bomb("dicom-64bit", "bomb.dcm", lambda: dicom_claiming(7000, 7000, 64), "7,000² x 64 bits", "too_large"),
        Bomb("j2k-siz-65000sq", "bomb.dcm", j2k_claiming, "SIZ 65,000² in a 64x56 dataset", "too_large"),
        Bomb("png-65000sq", "bomb.png", lambda: _png(65000, 65000), "IHDR 65,000² (4.2 GB)", "too_large"),
        Bomb("png-zlib-10000sq", "bomb.png", png_zlib_bomb, "IDAT inflating to 100 MB", "too_large"),
        Bomb("jpeg-65000sq", "bomb.jpg", lambda: _raster("jpeg", 65000), "SOF 65,000²", "too_large"),
        Bomb("tiff-100000sq", "bomb.tif", lambda: _raster("tiff", 100_000), "IFD 100,000²", "too_large"),
    )
}


def _address_space() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")


def run(names: list[str], max_pixels: int | None = None) -> list[dict]:
    """Build and decode each bomb in a forked child (memory and time limited); one result per bomb."""
    from pixelperfect.pipeline.decode.reader import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image
    from tests.fuzz.seeds import _phantoms

    decode_image(_phantoms()[0][1], "warm-up.dcm")  # pydicom's imports before the clock and the memory limit
    results = []
    for name in names:
        bomb = BOMBS[name]
        data = bomb.build()
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: limits, decode, the reason back through the pipe
            os.close(read)
            limit = _address_space() + MEMORY_LIMIT_MB * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
            signal.alarm(TIME_LIMIT_S)
            start = time.perf_counter()
            try:
                decode_image(data, bomb.key, max_pixels=max_pixels or DEFAULT_MAX_PIXELS)
                outcome = "decoded"
            except ImageDecodeError as exc:
                outcome = exc.reason
            except MemoryError:
                outcome = "MemoryError"
            except BaseException as exc:
                outcome = f"crash: {type(exc).__name__}: {exc}"[:300]
            os.write(write, json.dumps({"reason": outcome, "seconds": time.perf_counter() - start}).encode())
            os._exit(0)
        os.close(write)
        with io.FileIO(read) as pipe:
            payload = pipe.read()
        _, status = os.waitpid(pid, 0)
        result = json.loads(payload) if payload else {"reason": f"child died (wait status {status})", "seconds": 0}
        results.append({"name": name, "size": len(data), "declared": bomb.declared, "expected": bomb.reason, **result})
    return results


if __name__ == "__main__":
    for line in run(sys.argv[1:] or list(BOMBS)):
        print(json.dumps(line), flush=True)
