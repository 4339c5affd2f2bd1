"""A ground-truth mask file's bytes -> an ``(H, W)`` bool mask, its size checked from the header before decoding."""

from __future__ import annotations

import io
import warnings

import cv2
import numpy as np
from PIL import Image


def decode_mask(data: bytes, shape: tuple[int, int]) -> np.ndarray:
    """The mask in ``data`` (PNG, TIFF, ...; any non-zero pixel is foreground) as ``(H, W)`` bool. ``ValueError``
    when it does not decode or its size is not ``shape`` ``(H, W)``: the size is read from the header first, so a
    mask declaring 65,000² px is refused before a byte of it is inflated."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the size is compared to shape below
            with Image.open(io.BytesIO(data)) as probe:
                width, height = probe.size
    except Image.DecompressionBombError:
        raise ValueError("ground-truth mask declares more pixels than Pillow's decompression-bomb limit") from None
    except Exception as exc:  # PIL raises many types for bytes that are no image
        raise ValueError(f"ground-truth mask does not decode as an image ({type(exc).__name__})") from None
    if (height, width) != tuple(shape):
        raise ValueError(f"ground-truth mask is {width}x{height}, image is {shape[1]}x{shape[0]}")
    mask = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise ValueError("ground-truth mask does not decode as an image")
    if mask.shape != tuple(shape):
        raise ValueError(f"ground-truth mask is {mask.shape[1]}x{mask.shape[0]}, image is {shape[1]}x{shape[0]}")
    return mask > 0
