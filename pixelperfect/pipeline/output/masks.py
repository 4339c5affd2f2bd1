"""Mask encoding for the store: ``(H, W)`` bool masks as lossless 1-bit PNG bytes."""

from __future__ import annotations

import cv2
import numpy as np


def encode_mask_png(mask: np.ndarray, compression: int = 1) -> bytes:
    """``(H, W)`` bool -> lossless 1-bit greyscale PNG. OpenCV reads it back as ``uint8`` 0/255 (any flag); PIL
    opens it in mode ``"1"`` (``np.asarray`` gives bool). One bit per pixel makes it ~5x faster to encode than an
    8-bit PNG of the same mask (1 ms for 1024² at level 1) and smaller."""
    params = [cv2.IMWRITE_PNG_COMPRESSION, compression, cv2.IMWRITE_PNG_BILEVEL, 1]
    ok, buf = cv2.imencode(
        ".png", mask.view(np.uint8) if mask.dtype == bool else mask.astype(bool).view(np.uint8), params
    )
    if not ok:  # pragma: no cover - cv2 only fails on invalid arrays
        raise RuntimeError("PNG encoding of a mask failed")
    return buf.tobytes()
