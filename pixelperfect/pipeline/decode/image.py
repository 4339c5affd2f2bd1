"""The decoded-image record and the typed decode errors, shared by :mod:`~pixelperfect.pipeline.decode.reader`
(the entry point), :mod:`~pixelperfect.pipeline.decode.dicom` and :mod:`~pixelperfect.pipeline.decode.codecs`. It
imports nothing of theirs, so those modules depend on it and not on each other in a circle."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

DICOM_MAGIC_OFFSET = 128
DEFAULT_MAX_PIXELS = 50_000_000
#: Every ``reason`` a decode error may carry (the table of :mod:`~pixelperfect.pipeline.decode.reader`'s docstring
#: and :mod:`~pixelperfect.pipeline.decode.limits`'): the fuzz harnesses (``tests/fuzz``) hold the decode to it.
DECODE_REASONS = frozenset(
    {
        "empty", "not_an_image", "not_dicom", "dicom_unreadable", "truncated", "corrupt", "zero_size", "too_large",
        "too_small", "multi_frame", "frame_index", "colour", "pixel_type", "no_pixel_data", "missing_codec",
        "codec_error", "dicom_pixels", "bad_lut", "nan_pixels", "bad_attribute", "inflate_limit", "too_deep",
        "too_many_elements",
    }
)  # fmt: skip


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

    ``pixels``: ``(h, w)`` greyscale, bright = dense. PNG/JPEG/TIFF: ``uint8`` or ``uint16`` as stored
    (``float32`` for float or signed TIFF; colour converted to luminance ``float32`` only on request). DICOM:
    the ``uint8`` viewer image (0..255) when the file carries a VOI (window or VOI LUT), else ``float32``
    modality values; MONOCHROME1 is inverted either way (see :mod:`pixelperfect.pipeline.decode.dicom`).
    ``original_shape``: ``(H, W)`` of the stored image. It equals ``pixels.shape`` unless a reduced-resolution
    decode was asked for (``model_side``): then ``pixels`` is the image at ``1/scale`` of it (JPEG 2000
    resolution level or JPEG DCT scaling; a side is ``ceil(H / scale)``), and every coordinate (boxes, masks,
    pixel spacing) still refers to the original grid.
    ``meta``: format, width, height (the original's), bits and, for DICOM, modality, view position, pixel spacing,
    photometric interpretation, VOI used and hashed identifiers; never patient names. JSON-serialisable.
    """

    pixels: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)
    original_shape: tuple[int, int] | None = None
    scale: int = 1

    @property
    def shape(self) -> tuple[int, int]:
        """``(h, w)`` of :attr:`pixels` (the decoded, possibly reduced, image)."""
        return (int(self.pixels.shape[0]), int(self.pixels.shape[1]))

    @property
    def full_shape(self) -> tuple[int, int]:
        """``(H, W)`` of the original image: the grid of boxes, masks and the width/height columns."""
        return self.original_shape if self.original_shape is not None else self.shape

    @property
    def reduced(self) -> bool:
        return self.full_shape != self.shape


def is_dicom(data: bytes) -> bool:
    """A DICOM Part 10 file: 128-byte preamble then ``DICM``."""
    return len(data) >= DICOM_MAGIC_OFFSET + 4 and data[DICOM_MAGIC_OFFSET : DICOM_MAGIC_OFFSET + 4] == b"DICM"
