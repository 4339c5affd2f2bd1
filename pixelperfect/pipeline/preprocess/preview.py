"""Side-by-side preview of preprocessing variants: the decoded original first, then one panel per variant.

Variants run on the full-resolution image (as in a run); each panel is then resized to the same size (long side
at most ``max_side``) and labelled with the variant's name and canonical spec, so a person can compare them.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from pixelperfect.pipeline.preprocess.variants import Variant, to_uint8

LABEL_HEIGHT = 40
GAP = 4
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_NAME_COLOUR = (80, 220, 255)  # BGR amber
_SPEC_COLOUR = (200, 200, 200)


def panel_size(shape: tuple[int, int], max_side: int) -> tuple[int, int]:
    """``(height, width)`` of a panel: the image scaled so its long side is at most ``max_side`` (never up)."""
    height, width = shape
    scale = min(1.0, max_side / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def _label(panel: np.ndarray, name: str, spec: str) -> np.ndarray:
    """``(h, w) uint8`` grey panel -> ``(LABEL_HEIGHT + h, w, 3) uint8`` BGR with a two-line caption on top."""
    height, width = panel.shape
    out = np.zeros((LABEL_HEIGHT + height, width, 3), np.uint8)
    out[LABEL_HEIGHT:] = panel[..., None]
    cv2.putText(out, _fit(name, width, 0.55), (6, 17), _FONT, 0.55, _NAME_COLOUR, 1, cv2.LINE_AA)
    cv2.putText(out, _fit(spec, width, 0.38), (6, 34), _FONT, 0.38, _SPEC_COLOUR, 1, cv2.LINE_AA)
    return out


def _fit(text: str, width: int, scale: float) -> str:
    """``text`` shortened with an ellipsis so it fits ``width`` pixels at font ``scale``."""
    while text and cv2.getTextSize(text, _FONT, scale, 1)[0][0] > width - 12:
        text = text[:-4] + "..." if len(text) > 4 else ""
    return text


def render_preview(
    pixels: np.ndarray, variants: Sequence[Variant], *, max_side: int = 512, columns: int = 0
) -> np.ndarray:
    """The preview sheet as a ``(H, W, 3) uint8`` BGR array.

    ``pixels``: the decoded ``(H, W)`` image (any numeric dtype). ``columns``: panels per row (0: all in one
    row). Panels are separated by ``GAP`` dark pixels.
    """
    if pixels.ndim != 2:
        raise ValueError(f"expected a 2-D greyscale image, got shape {pixels.shape}")
    if not 16 <= max_side <= 4096:
        raise ValueError(f"max_side must be in 16..4096, got {max_side!r}")
    if columns < 0:
        raise ValueError(f"columns must be >= 0, got {columns!r}")
    height, width = panel_size(pixels.shape, max_side)
    panels = [("original", "decoded display image", to_uint8(pixels))]
    panels += [(variant.name, variant.spec, variant(pixels)) for variant in variants]
    labelled = [
        _label(cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA), name, spec)
        for name, spec, image in panels
    ]
    per_row = columns or len(labelled)
    rows = [labelled[i : i + per_row] for i in range(0, len(labelled), per_row)]
    cell_h, cell_w = LABEL_HEIGHT + height, width
    sheet_w = per_row * cell_w + (per_row - 1) * GAP
    sheet = np.full((len(rows) * cell_h + (len(rows) - 1) * GAP, sheet_w, 3), 24, np.uint8)
    for r, row in enumerate(rows):
        for c, cell in enumerate(row):
            y, x = r * (cell_h + GAP), c * (cell_w + GAP)
            sheet[y : y + cell_h, x : x + cell_w] = cell
    return sheet


def encode_png(image: np.ndarray) -> bytes:
    """Lossless PNG bytes of a ``uint8`` grey or BGR array."""
    ok, buffer = cv2.imencode(".png", image)
    if not ok:
        raise ValueError("PNG encoding failed")
    return buffer.tobytes()
