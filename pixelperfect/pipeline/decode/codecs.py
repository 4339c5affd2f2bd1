"""Compressed DICOM frames -> stored pixel values, with the fastest decoder installed for each transfer syntax.

pydicom's own pixel pipeline (its plugins: pylibjpeg-libjpeg, pylibjpeg-openjpeg, pylibjpeg-rle) is the reference
and the fallback; the decoders here take the same codestream and must give the same stored values: bit-identical
for lossless syntaxes (tests compare them on pydicom's test files and generated archive files), within ±1 grey
level for lossy JPEG (IDCT rounding). Measured single-thread on the 2-core development VM (``bench/p11_decode.py``
has the current figures): libjpeg-turbo (imagecodecs, OpenCV, Pillow) decodes 8-bit baseline JPEG ~5x faster
than pylibjpeg-libjpeg, and 12-bit lossless JPEG (process 14, SV1) ~5x faster; CharLS (imagecodecs) decodes
JPEG-LS ~4.5x faster than libjpeg; OpenJPEG is the JPEG 2000 decoder everywhere.

Fast paths cover what archives of radiographs hold: one sample per pixel, BitsAllocated 8 or 16, the codestream's
size matching the dataset and its precision within BitsAllocated. Signed stored values (PixelRepresentation 1) are
taken for the lossless syntaxes (JPEG lossless, JPEG-LS, JPEG 2000, RLE) and made the way pydicom makes them
(:func:`stored_values`). Anything else (colour, signed lossy JPEG, a mismatching header) returns ``None`` and the
caller uses pydicom.

Reduced resolution (``model_side``): JPEG 2000 is decoded at resolution level ``r`` (Pillow's ``reduce``; each
level halves both sides, rounding up), the largest ``r`` whose long side is still ``>= model_side`` and that the
codestream has (a stream with fewer wavelet levels decodes at the smallest it has), and of a stream with several
quality layers only the first :func:`reduced_layers` (``ceil(layers / 4**r)``: each level down has a quarter of the
pixels, and the later layers of a rate-allocated stream mostly refine the fine levels left out); 8-bit JPEG uses
libjpeg's DCT scaling (Pillow's draft mode: 1/2, 1/4, 1/8) the same way. Other syntaxes decode at full size, and a
full-resolution decode always reads every layer (lossless streams stay bit-exact).
"""

from __future__ import annotations

import functools
import importlib.util
import io
import math
import struct
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

#: The transfer syntaxes by their pydicom.uid names (ours -> pydicom's), read from pydicom when first used: this
#: module is on every worker's import path, also where no DICOM is read and pydicom is not installed (the GPU run's
#: PNG parts, bench/gpu_parts.py). ``codecs.JPEG_BASELINE`` and the like below are module attributes (PEP 562).
UID_NAMES = {
    "JPEG_BASELINE": "JPEGBaseline8Bit",
    "JPEG_EXTENDED": "JPEGExtended12Bit",
    "JPEG_LOSSLESS": "JPEGLossless",
    "JPEG_LOSSLESS_SV1": "JPEGLosslessSV1",
    "JPEG_LS_LOSSLESS": "JPEGLSLossless",
    "JPEG_LS_NEAR_LOSSLESS": "JPEGLSNearLossless",
    "J2K_LOSSLESS": "JPEG2000Lossless",
    "J2K": "JPEG2000",
    "RLE_LOSSLESS": "RLELossless",
}
HTJ2K_NAMES = ("HTJ2KLossless", "HTJ2KLosslessRPCL", "HTJ2K")


@dataclass(frozen=True)
class Syntaxes:
    """The transfer syntaxes the fast decoders take, their groups, and per syntax the decoders (:data:`CODECS`, one
    dict for the process: ``gpu.enable`` puts the GPU decoder in front) and the package that adds one."""

    JPEG_BASELINE: str
    JPEG_EXTENDED: str
    JPEG_LOSSLESS: str
    JPEG_LOSSLESS_SV1: str
    JPEG_LS_LOSSLESS: str
    JPEG_LS_NEAR_LOSSLESS: str
    J2K_LOSSLESS: str
    J2K: str
    RLE_LOSSLESS: str
    HTJ2K: tuple[str, ...]

    @property
    def JPEG_SYNTAXES(self) -> tuple[str, ...]:
        return (self.JPEG_BASELINE, self.JPEG_EXTENDED)

    @property
    def JPEG_LOSSLESS_SYNTAXES(self) -> tuple[str, ...]:
        return (self.JPEG_LOSSLESS, self.JPEG_LOSSLESS_SV1)

    @property
    def JPEG_LS_SYNTAXES(self) -> tuple[str, ...]:
        return (self.JPEG_LS_LOSSLESS, self.JPEG_LS_NEAR_LOSSLESS)

    @property
    def J2K_SYNTAXES(self) -> tuple[str, ...]:
        return (self.J2K_LOSSLESS, self.J2K, *self.HTJ2K)


@functools.cache
def syntaxes() -> Syntaxes:
    """The transfer syntaxes, from pydicom.uid (imported here, once)."""
    from pydicom import uid

    return Syntaxes(**{ours: getattr(uid, theirs) for ours, theirs in UID_NAMES.items()},
                    HTJ2K=tuple(getattr(uid, name) for name in HTJ2K_NAMES))  # fmt: skip


@functools.cache
def _tables() -> tuple[dict[str, str], dict[str, list[Codec]]]:
    """``PACKAGE_FOR`` and ``CODECS``, built once (the codec lists are this module's)."""
    ts = syntaxes()
    package_for = {
        **dict.fromkeys(ts.JPEG_SYNTAXES + ts.JPEG_LOSSLESS_SYNTAXES, "imagecodecs or pylibjpeg-libjpeg"),
        **dict.fromkeys(ts.JPEG_LS_SYNTAXES, "imagecodecs or pylibjpeg-libjpeg"),
        **dict.fromkeys(ts.J2K_SYNTAXES, "pylibjpeg-openjpeg or imagecodecs"),
        ts.RLE_LOSSLESS: "pylibjpeg-rle",
    }
    codecs: dict[str, list[Codec]] = {
        **dict.fromkeys(ts.JPEG_SYNTAXES, _JPEG),
        **dict.fromkeys(ts.JPEG_LOSSLESS_SYNTAXES, _JPEG_LOSSLESS),
        **dict.fromkeys(ts.JPEG_LS_SYNTAXES, _JPEG_LS),
        **dict.fromkeys(ts.J2K_SYNTAXES, _J2K),
        ts.RLE_LOSSLESS: _RLE,
    }
    return package_for, codecs


def decoders() -> dict[str, list[Codec]]:
    """The decoders per syntax, fastest first (``CODECS``; one dict for the process)."""
    return _tables()[1]


def __getattr__(name: str) -> Any:
    """``JPEG_BASELINE`` … ``RLE_LOSSLESS``, ``HTJ2K``, the ``*_SYNTAXES`` groups, ``PACKAGE_FOR`` (the package that
    adds a decoder for a syntax, named in ``missing_codec`` messages) and ``CODECS`` (the decoders per syntax)."""
    if name == "PACKAGE_FOR":
        return _tables()[0]
    if name == "CODECS":
        return decoders()
    if name in Syntaxes.__dataclass_fields__ or isinstance(getattr(Syntaxes, name, None), property):
        return getattr(syntaxes(), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass(frozen=True)
class FrameInfo:
    """What the dataset says about one frame: ``rows`` x ``columns`` pixels, ``bits_allocated`` 8 or 16,
    ``bits_stored`` <= ``bits_allocated``, ``signed`` (PixelRepresentation 1); one sample per pixel (the fast paths'
    scope). :func:`decode_frame` hands the decoders a copy with what the codestream says: its precision as
    ``bits_stored``, the JPEG 2000 quality ``layers`` to read and whether its samples are signed (``stream_signed``;
    decoders return a signed stream's samples as signed integers)."""

    rows: int
    columns: int
    bits_allocated: int
    bits_stored: int
    signed: bool = False
    layers: int = 0  # JPEG 2000 quality layers to decode (0: all); set by decode_frame for a reduced decode
    stream_signed: bool = False  # JPEG 2000: the codestream's samples are signed (SIZ); set by decode_frame

    @property
    def dtype(self) -> np.dtype:
        """The stored values' type, as pydicom gives it: ``(u)int8`` / ``(u)int16``."""
        return np.dtype(f"{'iu'[not self.signed]}{self.bits_allocated // 8}")


@dataclass
class StoredFrame:
    """Stored values of one frame: ``array`` ``(h, w)`` uint8/uint16 (``h = ceil(rows / scale)``), the name of the
    decoder that made it, and ``scale`` (1 = full resolution; else 2, 4 or 8)."""

    array: np.ndarray
    decoder: str
    scale: int = 1


class TruncatedStreamError(ValueError):
    """The codestream ends before its end marker (EOI / EOC)."""


def available(module: str) -> bool:
    """Whether ``module`` can be imported (cached; no import happens here)."""
    return _available(module)


@functools.cache
def _available(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


# ---------------------------------------------------------------------------------------------- codestream headers


def jpeg_header(stream: bytes) -> tuple[int, int, int, int] | None:
    """``(rows, columns, precision, components)`` from a JPEG / JPEG-LS frame header (SOFn or SOF55), else ``None``."""
    if not stream.startswith(b"\xff\xd8"):
        return None
    pos = 2
    while pos + 4 <= len(stream):
        if stream[pos] != 0xFF:
            return None
        marker = stream[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        (length,) = struct.unpack_from(">H", stream, pos + 2)
        if (0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC)) or marker == 0xF7:
            if pos + 10 > len(stream):
                return None
            precision, rows, cols, comps = struct.unpack_from(">BHHB", stream, pos + 4)
            return rows, cols, precision, comps
        if marker == 0xDA:  # start of scan before any frame header
            return None
        pos += 2 + length
    return None


def jpeg_complete(stream: bytes) -> bool:
    """An end-of-image marker follows the last start-of-scan (byte stuffing keeps EOI out of scan data). The usual
    stream ends with its EOI (DICOM pads a fragment to even length with one zero byte): then any start-of-scan,
    found from the front, is before it; else the last start-of-scan is searched from the back."""
    if stream.endswith((b"\xff\xd9", b"\xff\xd9\x00")):
        return stream.find(b"\xff\xda") >= 0
    sos = stream.rfind(b"\xff\xda")
    return sos >= 0 and stream.find(b"\xff\xd9", sos) >= 0


@dataclass(frozen=True)
class J2KHeader:
    """From the SIZ and COD markers: image size, components, precision/sign of the first one, wavelet levels,
    quality layers and the wavelet (``reversible``: the 5-3 integer wavelet of lossless streams; else 9-7)."""

    rows: int
    columns: int
    components: int
    precision: int
    signed: bool
    levels: int
    offset: int  # where the codestream starts (after a JP2 wrapper, if any)
    layers: int = 1
    reversible: bool = True


def j2k_header(stream: bytes) -> J2KHeader | None:
    """Parse a JPEG 2000 codestream's main header (a JP2 file is searched for its codestream); ``None`` if absent."""
    offset = 0 if stream.startswith(b"\xff\x4f\xff\x51") else stream.find(b"\xff\x4f\xff\x51")
    if offset < 0 or len(stream) < offset + 4 + 38 + 3:
        return None
    siz = offset + 4
    xsiz, ysiz, xo, yo = struct.unpack_from(">IIII", stream, siz + 4)
    (csiz,) = struct.unpack_from(">H", stream, siz + 36)
    ssiz = stream[siz + 38]
    (lsiz,) = struct.unpack_from(">H", stream, siz)
    cod = stream.find(b"\xff\x52", siz + lsiz, stream.find(b"\xff\x90", siz) if b"\xff\x90" in stream else None)
    # COD: marker, Lcod (2), Scod, progression order, layers (2), MCT, levels, code-block width and height, code-block
    # style, wavelet (0: 9-7 irreversible, 1: 5-3 reversible)
    levels, layers, reversible = 0, 1, True
    if cod >= 0 and cod + 14 <= len(stream):
        (layers,) = struct.unpack_from(">H", stream, cod + 6)
        levels, reversible = stream[cod + 9], stream[cod + 13] == 1
    precision, signed = (ssiz & 0x7F) + 1, bool(ssiz & 0x80)
    return J2KHeader(ysiz - yo, xsiz - xo, csiz, precision, signed, levels, offset, max(layers, 1), reversible)


def stream_shape(syntax: str, stream: bytes) -> tuple[int, int] | None:
    """``(rows, columns)`` the codestream itself declares (JPEG family, JPEG 2000), else ``None``."""
    if str(syntax) in syntaxes().J2K_SYNTAXES:
        header = j2k_header(stream)
        return (header.rows, header.columns) if header else None
    jpeg = jpeg_header(stream) if str(syntax) in decoders() and str(syntax) != syntaxes().RLE_LOSSLESS else None
    return jpeg[:2] if jpeg else None


def j2k_complete(stream: bytes) -> bool:
    """The codestream ends with its EOC marker (DICOM pads a fragment to even length with one zero byte)."""
    return stream.rstrip(b"\x00").endswith(b"\xff\xd9")


def reduction(long_side: int, model_side: int | None, max_level: int) -> int:
    """The largest ``r <= max_level`` with ``ceil(long_side / 2**r) >= model_side`` (0 when ``model_side`` is None)."""
    if model_side is None:
        return 0
    r = 0
    while r < max_level and math.ceil(long_side / 2 ** (r + 1)) >= model_side:
        r += 1
    return r


def reduced_layers(layers: int, r: int) -> int:
    """Quality layers to read of a ``layers``-layer JPEG 2000 stream decoded ``r`` resolution levels down:
    ``ceil(layers / 4**r)``, at least 1; every layer at full resolution (``r = 0``) or when unknown (``layers < 1``,
    returned as 0: all)."""
    if layers < 1:
        return 0
    return layers if r <= 0 else max(1, -(-layers // 4**r))


# ------------------------------------------------------------------------------------------------------ decoders
# Each takes (stream, info, r) and returns (h, w) stored values at 1/2**r; r > 0 only where the decoder scales.


def _imagecodecs_jpeg(stream: bytes, info: FrameInfo, r: int) -> np.ndarray:
    import imagecodecs

    return np.asarray(imagecodecs.jpeg8_decode(stream))


def _imagecodecs_jpegls(stream: bytes, info: FrameInfo, r: int) -> np.ndarray:
    import imagecodecs

    return np.asarray(imagecodecs.jpegls_decode(stream))


def _imagecodecs_j2k(stream: bytes, info: FrameInfo, r: int) -> np.ndarray:
    import imagecodecs

    return np.asarray(imagecodecs.jpeg2k_decode(stream, numthreads=1))


def _opencv_jpeg(stream: bytes, info: FrameInfo, r: int) -> np.ndarray:
    import cv2

    array = cv2.imdecode(np.frombuffer(stream, np.uint8), cv2.IMREAD_UNCHANGED)
    if array is None:
        raise ValueError("OpenCV could not decode the JPEG stream")
    return np.asarray(array)


def _pillow_jpeg(stream: bytes, info: FrameInfo, r: int) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(stream)) as image:
        if image.mode != "L":
            raise ValueError(f"Pillow reads this JPEG as {image.mode}, not greyscale")
        if r:
            scale = 2**r
            image.draft("L", (math.ceil(info.columns / scale), math.ceil(info.rows / scale)))
        image.load()
        return np.asarray(image)


def _pillow_j2k(stream: bytes, info: FrameInfo, r: int) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(stream)) as image:
        image.reduce = r  # type: ignore[attr-defined,assignment,method-assign]  # Jpeg2KImageFile: resolution level
        if r and info.layers:
            image.layers = info.layers  # type: ignore[attr-defined]  # quality layers (Pillow reads them when r > 0)
        image.load()
        array = np.asarray(image)
    if array.dtype == np.uint16 and info.bits_stored < 16:
        array = array >> (16 - info.bits_stored)  # Pillow scales precision < 16 up to 16 bits (a left shift)
    if info.stream_signed:
        # Pillow keeps a signed stream's DC level shift: sample + 2**(p-1), unsigned. Flipping bit p-1 gives the
        # sample's p-bit two's complement; widening it from p bits gives the sample.
        if array.dtype != np.uint16:
            raise ValueError(f"Pillow reads this signed JPEG 2000 stream as {array.dtype}")
        p = info.bits_stored
        array = array ^ np.uint16(1 << (p - 1))
        return _sign_extend(array.view(np.int16), p)
    return array


def _pylibjpeg_openjpeg(stream: bytes, info: FrameInfo, r: int) -> np.ndarray:
    import openjpeg

    return np.asarray(openjpeg.decode(stream, j2k_format=0))


def _pylibjpeg_rle(stream: bytes, info: FrameInfo, r: int) -> np.ndarray:
    from rle.utils import decode_frame

    raw = decode_frame(stream, info.rows * info.columns, info.bits_allocated, "<")
    return np.frombuffer(raw, f"<u{info.bits_allocated // 8}").reshape(info.rows, info.columns)  # the bit patterns


@dataclass(frozen=True)
class Codec:
    """A decoder of one family: ``module`` must be importable; ``bits``: the precisions it reads; ``scales``: it
    can decode at reduced resolution."""

    name: str
    module: str
    decode: Callable[[bytes, FrameInfo, int], np.ndarray]
    bits: tuple[int, ...] = tuple(range(2, 17))
    scales: bool = False


_JPEG = [
    Codec("imagecodecs-jpeg8", "imagecodecs", _imagecodecs_jpeg, bits=(8, 12)),
    Codec("opencv", "cv2", _opencv_jpeg, bits=(8,)),
    Codec("pillow", "PIL", _pillow_jpeg, bits=(8,), scales=True),
]
# libjpeg-turbo only: imagecodecs' liblj92 (ljpeg_decode) was the fallback for streams libjpeg-turbo refuses, and
# on such streams it reads Huffman tables that were never defined and crashes the process (docs/fuzzing.md F13)
_JPEG_LOSSLESS = [Codec("imagecodecs-jpeg8", "imagecodecs", _imagecodecs_jpeg)]
_JPEG_LS = [Codec("imagecodecs-jpegls", "imagecodecs", _imagecodecs_jpegls)]
_J2K = [
    Codec("pillow-openjpeg", "PIL", _pillow_j2k, scales=True),
    Codec("imagecodecs-openjpeg", "imagecodecs", _imagecodecs_j2k),
    Codec("pylibjpeg-openjpeg", "openjpeg", _pylibjpeg_openjpeg),
]
_RLE = [Codec("pylibjpeg-rle", "rle", _pylibjpeg_rle)]


def codecs_for(syntax: str, *, reduced: bool = False) -> list[Codec]:
    """The installed decoders for ``syntax``, fastest first; with ``reduced`` the scaling ones come first."""
    found = [codec for codec in decoders().get(str(syntax), []) if available(codec.module)]
    if reduced:  # a device decoder (gpu_decode) stays first: its full decode beats a reduced one on the CPU
        return sorted(found, key=lambda codec: (codec.name != "nvimgcodec", not codec.scales))
    if str(syntax) in syntaxes().J2K_SYNTAXES:  # Pillow's full decode is OpenJPEG's plus a shift: the others first
        return sorted(found, key=lambda codec: codec.scales)
    return found


def decode_frame(syntax: str, stream: bytes, info: FrameInfo, *, model_side: int | None = None) -> StoredFrame | None:
    """Decode one frame's codestream with the fastest installed decoder that accepts it.

    Returns ``None`` when no fast decoder applies or all failed (the caller falls back to pydicom, whose errors
    are the reference). Raises :class:`TruncatedStreamError` when the codestream lacks its end marker: libjpeg
    and OpenJPEG would pad the missing rows with grey. ``model_side``: reduced resolution (module docstring).
    """
    syntax = str(syntax)
    if syntax not in decoders() or (info.signed and syntax in syntaxes().JPEG_SYNTAXES):  # signed lossy JPEG: pydicom's
        return None
    header = _check_header(syntax, stream, info)
    if header is None:
        return None
    precision, levels, layers, stream_signed = header
    dataset_bits = info.bits_stored
    # the codestream's own precision (Pillow scales J2K by it) and sign
    info = replace(info, bits_stored=precision, stream_signed=stream_signed)
    r = 0
    if (
        syntax in syntaxes().J2K_SYNTAXES and stream_signed == info.signed
    ):  # else patterns, which wrap at zero: full size
        r = reduction(max(info.rows, info.columns), model_side, levels)
        info = replace(info, layers=reduced_layers(layers, r) if r else 0)
    elif syntax in syntaxes().JPEG_SYNTAXES and precision == 8:
        r = reduction(max(info.rows, info.columns), model_side, 3)
    for codec in codecs_for(syntax, reduced=r > 0):
        if precision not in codec.bits:
            continue
        level = r if codec.scales else 0
        try:
            array = codec.decode(stream, info, level)
        except Exception:  # this decoder refused the stream: the next one (then pydicom) decides
            continue
        except BaseException as exc:  # a Rust decoder's panic (pylibjpeg-rle) is no Exception: the same
            if not is_codec_panic(exc):
                raise
            continue
        # a scaling decoder may stop short of level r (Pillow's draft picks 1/4 for some odd sizes): any level up
        # to the one asked for is the original grid at that scale
        sizes = {(math.ceil(info.rows / 2**k), math.ceil(info.columns / 2**k)): 2**k for k in range(level + 1)}
        if array.ndim != 2 or array.shape not in sizes or array.dtype.kind not in "ui":
            continue
        if (array.dtype.kind == "i") != stream_signed:  # signed samples for signed streams only (bit patterns else)
            continue
        stored = stored_values(array, syntax, replace(info, bits_stored=dataset_bits), precision, stream_signed)
        return StoredFrame(stored, codec.name, sizes[array.shape])
    return None


def is_codec_panic(exc: BaseException) -> bool:
    """A panic inside a Rust decoder (pyo3's ``PanicException``, a ``BaseException``: pylibjpeg-rle 2.x panics with
    "index out of bounds" on RLE segments that decode past the frame, docs/fuzzing.md): the stream is refused."""
    return type(exc).__name__ == "PanicException"


def stored_values(array: np.ndarray, syntax: str, info: FrameInfo, precision: int, stream_signed: bool) -> np.ndarray:
    """A decoder's samples -> the stored values pydicom gives for the same frame (its ``pixel_array`` before any
    LUT): the samples' bit patterns as ``info.dtype`` (signed for PixelRepresentation 1), then pydicom's corrections,
    a shift up and back down that sign-extends (signed) or clears (unsigned) the bits above bit ``n``:

    * JPEG 2000: ``n`` = the codestream's ``precision``, only when the codestream's sign differs from the dataset's;
    * JPEG-LS (no sign in the codestream): ``n`` = ``precision``, for signed datasets;
    * JPEG, JPEG lossless, RLE: ``n`` = ``info.bits_stored`` (BitsStored), when BitsAllocated is larger.

    ``info.bits_stored`` is the dataset's BitsStored here, ``precision`` the codestream's (``stream_signed``: JPEG
    2000's SIZ sign)."""
    target = info.dtype
    # the same bit patterns; a decoder's uint8 for an 8-bit codestream in 16-bit words: the same values
    array = array.view(target) if array.dtype.itemsize == target.itemsize else array.astype(target)
    bits = 8 * target.itemsize
    if syntax in syntaxes().J2K_SYNTAXES:
        n = precision if stream_signed != info.signed else bits
    elif syntax in syntaxes().JPEG_LS_SYNTAXES:
        n = precision if info.signed else bits
    else:
        n = info.bits_stored
        if not info.signed and syntax != syntaxes().RLE_LOSSLESS and precision <= n:
            n = bits  # an unsigned codestream of at most BitsStored bits has nothing above them
    if n >= bits:
        return array
    if not array.flags.writeable:
        array = array.copy()
    if info.signed:
        return _sign_extend(array, n)
    np.bitwise_and(array, target.type((1 << n) - 1), out=array)
    return array


def _sign_extend(array: np.ndarray, n: int) -> np.ndarray:
    """Signed integers whose low ``n`` bits are a two's complement number -> that number (in place when writeable)."""
    shift = 8 * array.dtype.itemsize - n
    if shift <= 0:
        return array
    if not array.flags.writeable:
        array = array.copy()
    np.left_shift(array, shift, out=array)
    np.right_shift(array, shift, out=array)  # arithmetic on signed integers
    return array


def _check_header(syntax: str, stream: bytes, info: FrameInfo) -> tuple[int, int, int, bool] | None:
    """The codestream's precision, wavelet levels, quality layers and sign (JPEG 2000's; else False) when a fast
    path may take it (else ``None``); raises :class:`TruncatedStreamError` for a stream without its end marker."""
    if syntax == syntaxes().RLE_LOSSLESS:
        return info.bits_stored, 0, 0, False
    if syntax in syntaxes().J2K_SYNTAXES:
        header = j2k_header(stream)
        if header is None:
            return None
        if not j2k_complete(stream):
            raise TruncatedStreamError("the JPEG 2000 codestream ends before its EOC marker")
        same = (header.rows, header.columns, header.components) == (info.rows, info.columns, 1)
        if same and header.precision <= info.bits_allocated and header.offset == 0:
            return header.precision, header.levels, header.layers, header.signed
        return None
    jpeg = jpeg_header(stream)
    if jpeg is None:
        return None
    if not jpeg_complete(stream):
        raise TruncatedStreamError("the JPEG stream ends before its end-of-image marker")
    rows, cols, precision, comps = jpeg
    same = (rows, cols, comps) == (info.rows, info.columns, 1) and precision <= info.bits_allocated
    return (precision, 0, 0, False) if same else None
