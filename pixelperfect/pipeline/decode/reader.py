"""Bytes -> greyscale image plus metadata. PNG/JPEG/TIFF (8- and 16-bit, float TIFF) and DICOM.

Failures raise :class:`UnsupportedImageError` (a valid file we will not read: colour, multi-frame, too large, a
missing codec) or :class:`CorruptImageError` (unreadable bytes); both carry the object key and a short ``reason``
code that the worker stores on the image row:

============== ==================================================================================
empty          the object has 0 bytes
not_an_image   neither a raster format PIL recognises nor DICOM
not_dicom      claims to be DICOM (``.dcm``) but is not
truncated      pixel data ends early (a PNG without IEND, a JPEG without EOI after its last scan, ...)
corrupt        a recognised raster format whose complete data does not decode
zero_size      a header with 0 rows or columns
too_large      more pixels than ``max_pixels`` (checked from the header, before decoding)
too_small      a side below ``min_side``
multi_frame    several frames and no ``frame`` chosen; ``frame_index``: the chosen frame is absent
colour         real colour content and ``colour_to_grey`` not set
pixel_type     a raster pixel type we do not read (e.g. complex, 64-bit)
no_pixel_data  a DICOM object without pixel data (a report, a plan)
missing_codec  a compressed DICOM transfer syntax with no installed decoder
codec_error    the installed decoders all failed on the compressed stream
dicom_pixels   other DICOM pixel decoding errors (pixels of another shape than Rows x Columns, ...)
bad_lut        an unusable modality, VOI or palette colour LUT
nan_pixels     rescale or LUT values that are NaN, infinite or beyond float32
bad_attribute  an image pixel attribute that is no single number (an IS of text, several values, an unknown VR)
inflate_limit  a deflated dataset that inflates past ``max_inflated_bytes`` (:mod:`.limits`, checked first)
too_deep       sequences nested deeper than ``max_sequence_depth`` (:mod:`.limits`)
too_many_...   ``too_many_elements``: more data elements than ``max_elements`` (:mod:`.limits`)
============== ==================================================================================
``image.DECODE_REASONS`` is this table as a set; the fuzz harnesses (``tests/fuzz``) hold the decode to it.
"""

from __future__ import annotations

import io
import warnings
from typing import Any

import cv2
import numpy as np
from PIL import Image

from pixelperfect.pipeline.decode.dicom import decode_dicom
from pixelperfect.pipeline.decode.image import (
    DEFAULT_MAX_PIXELS,
    DICOM_MAGIC_OFFSET,
    CorruptImageError,
    DecodedImage,
    ImageDecodeError,
    UnsupportedImageError,
    is_dicom,
)
from pixelperfect.pipeline.decode.limits import DEFAULT_LIMITS, DecodeLimits

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "DICOM_MAGIC_OFFSET",
    "CorruptImageError",
    "DecodedImage",
    "ImageDecodeError",
    "UnsupportedImageError",
    "decode_image",
    "is_dicom",
]


#: Signatures of the raster formats we read. They decide over the key's extension: a PNG named ``.dcm`` is a PNG.
_RASTER_MAGIC = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG", b"II*\x00": "TIFF", b"MM\x00*": "TIFF"}


def _raster_format(data: bytes) -> str | None:
    return next((fmt for magic, fmt in _RASTER_MAGIC.items() if data.startswith(magic)), None)


def _damage(data: bytes, fmt: str | None) -> str:
    """Why bytes of raster format ``fmt`` do not decode: ``truncated`` if its end marker is missing (PNG: no
    ``IEND`` chunk; JPEG: no EOI after the last start-of-scan, where byte stuffing keeps EOI out of scan data),
    else ``corrupt``."""
    if fmt == "PNG" and data.rfind(b"IEND") < 0:
        return "truncated"
    if fmt == "JPEG":
        sos = data.rfind(b"\xff\xda")
        if sos < 0 or data.find(b"\xff\xd9", sos) < 0:
            return "truncated"
    return "corrupt"


def _looks_like_bare_dicom(data: bytes) -> bool:
    """A dataset without preamble (e.g. pydicom's ``no_meta.dcm``) starts with a group 0x0002 or 0x0008 tag."""
    return len(data) >= 8 and data[:2] in (b"\x02\x00", b"\x08\x00") and data[3:4] == b"\x00"


def decode_image(
    data: bytes,
    key: str,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int = 8,
    frame: int | None = None,
    colour_to_grey: bool = False,
    window_index: int = 0,
    model_side: int | None = None,
    limits: DecodeLimits = DEFAULT_LIMITS,
) -> DecodedImage:
    """Decode ``data`` (the object stored at ``key``) into a :class:`DecodedImage`.

    The pixel count is checked against ``max_pixels`` from the header, before any pixel is decoded, so a
    decompression bomb costs nothing. Images smaller than ``min_side`` on either side are refused.
    ``frame``: take this frame of a multi-frame file (``None``: multi-frame is an error). ``colour_to_grey``:
    convert colour to luminance instead of refusing it. ``window_index``: which DICOM window / VOI LUT to use.
    ``model_side``: the long side the model will resize the image to (SAM: 1024). When given, a DICOM JPEG 2000
    image is decoded at its smallest resolution level whose long side is still ``>= model_side`` and a JPEG one
    with DCT scaling the same way (see :mod:`~pixelperfect.pipeline.decode.codecs`); :attr:`DecodedImage.original_shape`
    keeps the stored size. ``None``: full resolution. ``limits``: what a DICOM object may declare before pydicom
    reads it (:mod:`~pixelperfect.pipeline.decode.limits`: inflated bytes, sequence depth, element count).
    """
    if max_pixels < 1 or min_side < 1 or window_index < 0 or (frame is not None and frame < 0):
        raise ValueError(f"bad decode options: {max_pixels=}, {min_side=}, {frame=}, {window_index=}")
    if model_side is not None and model_side < 1:
        raise ValueError(f"model_side must be >= 1 or None, got {model_side!r}")
    if not data:
        raise CorruptImageError(key, "empty", "the object has 0 bytes")
    image = _decode_dicom_or_raster(data, key, max_pixels, frame, colour_to_grey, window_index, model_side, limits)
    height, width = image.full_shape
    if min(height, width) < min_side:
        raise UnsupportedImageError(key, "too_small", f"{width}x{height} px is below the {min_side} px minimum")
    image.meta.setdefault("width", width)
    image.meta.setdefault("height", height)
    return image


def _decode_dicom_or_raster(
    data: bytes,
    key: str,
    max_pixels: int,
    frame: int | None,
    colour_to_grey: bool,
    window_index: int,
    model_side: int | None,
    limits: DecodeLimits,
) -> DecodedImage:
    options: dict[str, Any] = {"max_pixels": max_pixels, "frame": frame, "colour_to_grey": colour_to_grey}
    dicom_options: dict[str, Any] = {
        **options,
        "window_index": window_index,
        "model_side": model_side,
        "limits": limits,
    }
    if is_dicom(data) or (key.lower().endswith((".dcm", ".dicom")) and _raster_format(data) is None):
        return decode_dicom(data, key, **dicom_options)
    if _looks_like_bare_dicom(data):
        try:
            return decode_dicom(data, key, **dicom_options)
        except CorruptImageError as exc:
            if exc.reason != "not_dicom":
                raise
    return _decode_raster(data, key, **options)


def _decode_raster(data: bytes, key: str, *, max_pixels: int, frame: int | None, colour_to_grey: bool) -> DecodedImage:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit applies below
            with Image.open(io.BytesIO(data)) as probe:  # reads the header only
                fmt, (width, height), mode = probe.format, probe.size, probe.mode
                frames = int(getattr(probe, "n_frames", 1) or 1)
    except Image.DecompressionBombError as exc:
        raise UnsupportedImageError(key, "too_large", str(exc)) from None
    except Exception as exc:  # PIL raises many types for bad bytes
        known = _raster_format(data)
        if known:  # the right signature, an unreadable header
            raise CorruptImageError(
                key, _damage(data, known), f"{known} header does not parse ({type(exc).__name__})"
            ) from None
        raise CorruptImageError(key, "not_an_image", f"unrecognised image data ({type(exc).__name__})") from None
    if width <= 0 or height <= 0:
        raise CorruptImageError(key, "zero_size", f"{width}x{height} px")
    if width * height > max_pixels:
        raise UnsupportedImageError(
            key, "too_large", f"{width}x{height} = {width * height} px exceeds the limit of {max_pixels} px"
        )
    if frames > 1 and frame is None:
        raise UnsupportedImageError(key, "multi_frame", f"{frames} frames; pass frame=0 to take the first")
    if frame is not None and frame >= frames:
        raise UnsupportedImageError(key, "frame_index", f"frame {frame} requested, the file has {frames}")
    if fmt == "JPEG" and _damage(data, fmt) == "truncated":  # libjpeg would pad the missing rows with grey
        raise CorruptImageError(key, "truncated", "the JPEG stream ends before its end-of-image marker")
    array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) if not frame else None
    if array is None:
        array = _decode_with_pil(data, key, frame or 0)
    if array.ndim == 3:
        array = _to_grey(array, key, mode, colour_to_grey)
    if array.dtype == np.float64 or array.dtype.kind == "i":
        array = array.astype(np.float32)
    if array.dtype not in (np.uint8, np.uint16, np.float32) or array.ndim != 2:
        raise UnsupportedImageError(key, "pixel_type", f"pixel type {array.dtype} {array.shape} is not supported")
    if array.dtype == np.float32 and not np.isfinite(array).all():
        raise CorruptImageError(key, "nan_pixels", "the image holds NaN or infinite values")
    bits = {np.dtype(np.uint8): 8, np.dtype(np.uint16): 16}.get(array.dtype, 32)
    meta: dict[str, Any] = {"format": (fmt or "unknown").lower(), "bits": bits, "mode": mode, "frames": frames}
    if frame is not None:
        meta["frame"] = frame
    return DecodedImage(array, meta)


def _decode_with_pil(data: bytes, key: str, frame: int) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.seek(frame)
            img.load()
            page: Image.Image = img
            if page.mode in ("P", "PA"):
                page = page.convert("RGBA" if "transparency" in page.info or page.mode == "PA" else "RGB")
            array = np.asarray(page)
            # PIL gives RGB(A); match OpenCV's BGR(A) channel order for _to_grey
            return array[..., [2, 1, 0, *range(3, array.shape[-1])]] if array.ndim == 3 else array
    except Exception as exc:
        reason = _damage(data, _raster_format(data))
        raise CorruptImageError(key, reason, f"pixel data does not decode ({type(exc).__name__}: {exc})") from None


def _to_grey(array: np.ndarray, key: str, mode: str, colour_to_grey: bool) -> np.ndarray:
    """``(H, W, C)`` BGR(A) -> ``(H, W)``. Grey content in a colour container (B = G = R) is taken as is; real
    colour is refused unless ``colour_to_grey``, then converted to luminance (``float32``)."""
    channels = array[..., :3]
    if channels.shape[-1] == 1:
        return np.ascontiguousarray(channels[..., 0])
    if channels.shape[-1] != 3:
        raise UnsupportedImageError(key, "pixel_type", f"{channels.shape[-1]} channels ({mode})")
    spread = np.abs(channels.astype(np.int32) - channels[..., :1].astype(np.int32)).max()
    tolerance = 2 if array.dtype == np.uint8 else 2 * 257
    if spread <= tolerance:
        return np.ascontiguousarray(channels[..., 1])
    if not colour_to_grey:
        raise UnsupportedImageError(key, "colour", f"a colour image ({mode}); radiographs are greyscale")
    return np.asarray(channels, np.float32) @ np.array([0.114, 0.587, 0.299], np.float32)  # BGR luminance
