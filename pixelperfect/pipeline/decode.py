"""Bytes -> greyscale image plus metadata. PNG/JPEG/TIFF (8- and 16-bit) and DICOM.

Failures raise :class:`UnsupportedImageError` (a valid file we will not read: colour, multi-frame, too large, a
missing codec) or :class:`CorruptImageError` (unreadable bytes); both carry the object key and a short ``reason``
code that the worker stores on the image row.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
from PIL import Image

DICOM_MAGIC_OFFSET = 128


class ImageDecodeError(Exception):
    """An image that cannot become a greyscale array. ``reason`` is a short machine-readable code."""

    def __init__(self, key: str, reason: str, detail: str) -> None:
        self.key, self.reason, self.detail = key, reason, detail
        super().__init__(f"{key}: {reason}: {detail}")


class UnsupportedImageError(ImageDecodeError):
    """A readable file of a kind we do not segment (colour, multi-frame, too large, unknown format)."""


class CorruptImageError(ImageDecodeError):
    """Bytes that do not decode: empty, truncated, or not what they claim to be."""


@dataclass
class DecodedImage:
    """A decoded radiograph.

    ``pixels``: ``(H, W)`` greyscale, ``uint8`` or ``uint16`` for PNG/JPEG/TIFF as stored, ``float32`` display
    values for DICOM (modality and VOI LUTs applied, MONOCHROME1 inverted so that bright = dense).
    ``meta``: format, width, height, bits and, for DICOM, modality, view position, pixel spacing, photometric
    interpretation; never patient names.
    """

    pixels: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.pixels.shape[0]), int(self.pixels.shape[1]))


def is_dicom(data: bytes) -> bool:
    return len(data) >= DICOM_MAGIC_OFFSET + 4 and data[DICOM_MAGIC_OFFSET : DICOM_MAGIC_OFFSET + 4] == b"DICM"


def decode_image(data: bytes, key: str, *, max_pixels: int = 50_000_000, min_side: int = 8) -> DecodedImage:
    """Decode ``data`` (the object stored at ``key``) into a :class:`DecodedImage`.

    The pixel count is checked against ``max_pixels`` from the header, before any pixel is decoded, so a
    decompression bomb costs nothing. Images smaller than ``min_side`` on either side are refused.
    """
    if not data:
        raise CorruptImageError(key, "empty", "the object has 0 bytes")
    if is_dicom(data) or key.lower().endswith((".dcm", ".dicom")):
        from pixelperfect.pipeline.dicom import decode_dicom

        image = decode_dicom(data, key, max_pixels=max_pixels)
    else:
        image = _decode_raster(data, key, max_pixels=max_pixels)
    height, width = image.shape
    if min(height, width) < min_side:
        raise UnsupportedImageError(key, "too_small", f"{width}x{height} px is below the {min_side} px minimum")
    image.meta.setdefault("width", width)
    image.meta.setdefault("height", height)
    return image


def _decode_raster(data: bytes, key: str, *, max_pixels: int) -> DecodedImage:
    try:
        with Image.open(io.BytesIO(data)) as probe:  # reads the header only
            fmt, (width, height), mode = probe.format, probe.size, probe.mode
            frames = getattr(probe, "n_frames", 1)
    except Image.DecompressionBombError as exc:
        raise UnsupportedImageError(key, "too_large", str(exc)) from None
    except Exception as exc:  # PIL raises many types for bad bytes
        raise CorruptImageError(key, "not_an_image", f"unrecognised image data ({type(exc).__name__})") from None
    if width * height > max_pixels:
        raise UnsupportedImageError(
            key, "too_large", f"{width}x{height} = {width * height} px exceeds the limit of {max_pixels} px"
        )
    if frames > 1:
        raise UnsupportedImageError(key, "multi_frame", f"{frames} frames; a radiograph has one")
    array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if array is None:
        array = _decode_with_pil(data, key)
    if array.ndim == 3:
        array = _to_grey(array, key, mode)
    if array.dtype not in (np.uint8, np.uint16):
        if array.dtype == np.float32 or array.dtype == np.int32 or array.dtype == np.int16:
            array = array.astype(np.float32)
        else:
            raise UnsupportedImageError(key, "pixel_type", f"pixel type {array.dtype} is not supported")
    bits = 8 if array.dtype == np.uint8 else 16
    return DecodedImage(array, {"format": (fmt or "unknown").lower(), "bits": bits, "mode": mode})


def _decode_with_pil(data: bytes, key: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return np.asarray(img)
    except Exception as exc:
        raise CorruptImageError(key, "truncated", f"pixel data does not decode ({type(exc).__name__})") from None


def _to_grey(array: np.ndarray, key: str, mode: str) -> np.ndarray:
    """Colour containers of grey content (R = G = B) are accepted; real colour is refused."""
    channels = array[..., :3]
    if channels.shape[-1] == 1:
        return channels[..., 0]
    spread = np.abs(channels.astype(np.int32) - channels[..., :1].astype(np.int32)).max()
    if spread > 2:
        raise UnsupportedImageError(key, "colour", f"a colour image ({mode}); radiographs are greyscale")
    return np.ascontiguousarray(channels[..., 0])
