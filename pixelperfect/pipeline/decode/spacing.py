"""Pixel spacing in millimetres: which DICOM attribute applies, what is refused, and the surface scores it feeds.

Spacing is ``(row, col)`` mm: the distance between the centres of adjacent rows (vertical) then of adjacent
columns (horizontal), DICOM's value order for Pixel Spacing (PS3.3 10.7.1.3).

Which attribute (PS3.3 10.7.1 "Basic Pixel Spacing Calibration Macro", C.7.6.2 Image Plane, C.8.11.4 DX Detector):

1. ``PixelSpacing`` (0028,0030) when present: spacing in the patient (or calibrated) plane;
2. else ``ImagerPixelSpacing`` (0018,1164), the spacing at the detector's front plane, divided by
   ``EstimatedRadiographicMagnificationFactor`` (0018,1114) when that is present and > 0, which moves it to the
   object plane (a chest PA film is magnified ~1.1x at the detector); without the factor the detector-plane value
   is used and ``spacing_source`` says so;
3. else, for sources that carry none (PNG, JPEG, TIFF, DICOM without either tag), the run's ``--pixel-spacing``;
4. else unknown: surface metrics stay in pixels.

Refused (recorded unknown, with ``spacing_warning`` in the image's ``meta``, never used): a value that is not two
numbers, zero, negative, not finite, or anisotropic beyond ``MAX_ANISOTROPY`` (row/col or col/row > 10).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from pixelperfect.pipeline.records import Spacing

#: Beyond this ratio of the two spacings a value is taken for an encoding error, not a detector.
MAX_ANISOTROPY = 10.0


def validate_spacing(values: Any, what: str) -> tuple[Spacing, str | None]:
    """``(spacing, None)`` for a usable ``(row, col)`` mm value, ``(None, warning)`` otherwise; ``None`` in gives
    ``(None, None)`` (absent is not a warning). ``what`` names the attribute in the warning."""
    if values is None:
        return None, None
    items: list[Any]
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence | np.ndarray):
        items = [values]
    else:
        items = list(values)
    if len(items) == 1 and isinstance(items[0], str) and "\\" in items[0]:
        items = items[0].split("\\")  # a raw DS multi-value
    try:
        numbers = [float(v) for v in items]
    except (TypeError, ValueError):
        return None, f"{what} {_show(values)} is not numeric: spacing unknown, surface metrics in px"
    if len(numbers) != 2:
        return None, f"{what} {_show(values)} does not have 2 values: spacing unknown, surface metrics in px"
    row, col = numbers
    if not all(math.isfinite(v) and v > 0 for v in numbers):
        return None, f"{what} {_show(values)} is not > 0: spacing unknown, surface metrics in px"
    if max(row / col, col / row) > MAX_ANISOTROPY:
        return None, (
            f"{what} {_show(values)} has a row/col ratio above {MAX_ANISOTROPY:g}: spacing unknown, surface metrics "
            "in px"
        )
    return (row, col), None


def dicom_spacing_meta(ds: Any) -> dict[str, Any]:
    """The spacing entries of a DICOM image's ``meta``: ``pixel_spacing`` (the raw attribute used, as numbers when
    they are numbers), ``spacing_mm`` (``[row, col]`` or ``None``), ``spacing_source`` and, when refused,
    ``spacing_warning``. Never raises on a malformed value."""
    tag = "PixelSpacing" if _present(ds, "PixelSpacing") else "ImagerPixelSpacing"
    raw = _get(ds, tag)
    if raw is None:
        return {"pixel_spacing": None, "spacing_mm": None, "spacing_source": None}
    spacing, warning = validate_spacing(raw, tag)
    source = tag
    if spacing is not None and tag == "ImagerPixelSpacing":
        factor, _ = _number(_get(ds, "EstimatedRadiographicMagnificationFactor"))
        if factor is not None and factor > 0:
            spacing, source = (
                (spacing[0] / factor, spacing[1] / factor),
                f"{tag}/EstimatedRadiographicMagnificationFactor",
            )
        else:
            source = f"{tag} (detector plane)"
    meta: dict[str, Any] = {
        "pixel_spacing": _numbers_or_text(raw),
        "spacing_mm": list(spacing) if spacing else None,
        "spacing_source": source if spacing else None,
    }
    if warning:
        meta["spacing_warning"] = warning
    return meta


def resolve_spacing(meta: dict[str, Any], run_spacing: Spacing) -> tuple[Spacing, dict[str, Any]]:
    """The spacing to score an image with, and the ``meta`` entries to record: the file's own (DICOM, already in
    ``meta``) first, else the run's ``--pixel-spacing`` (``spacing_source: "--pixel-spacing"``), else ``None``."""
    own = meta.get("spacing_mm")
    if own:
        return (float(own[0]), float(own[1])), {}
    if run_spacing is not None:
        return run_spacing, {"spacing_mm": list(run_spacing), "spacing_source": "--pixel-spacing"}
    return None, {"spacing_mm": None}


def parse_spacing_option(text: str) -> tuple[float, float]:
    """``--pixel-spacing``: ``"0.14"`` (square pixels) or ``"ROW,COL"`` mm; ``ValueError`` names a bad value."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) == 1:
        parts = parts * 2
    spacing, warning = validate_spacing(parts, "--pixel-spacing")
    if spacing is None:
        raise ValueError((warning or f"--pixel-spacing {text!r} is invalid").split(":")[0] + " (use ROW,COL in mm)")
    return spacing


def _present(ds: Any, tag: str) -> bool:
    try:
        return tag in ds and ds[tag].value not in (None, "", [])
    except Exception:
        return False


def _get(ds: Any, tag: str) -> Any:
    if not _present(ds, tag):
        return None
    try:
        value = ds[tag].value
    except Exception:  # a value pydicom cannot convert (e.g. "abc" in a DS): keep its raw bytes as text
        raw = getattr(ds.get_item(tag), "value", b"")
        return raw.decode("ascii", "replace") if isinstance(raw, bytes) else str(raw)
    if isinstance(value, (str, bytes)):
        return value.decode("ascii", "replace") if isinstance(value, bytes) else value
    try:
        return list(value)
    except TypeError:
        return value


def _number(value: Any) -> tuple[float | None, bool]:
    try:
        out = float(value[0] if isinstance(value, list) else value)
    except (TypeError, ValueError, IndexError):
        return None, False
    return (out, True) if math.isfinite(out) else (None, False)


def _numbers_or_text(raw: Any) -> Any:
    items = raw if isinstance(raw, list) else [raw]
    try:
        numbers = [float(v) for v in items]
    except (TypeError, ValueError):
        return [str(v) for v in items]
    return numbers if all(math.isfinite(v) for v in numbers) else [str(v) for v in items]  # JSON has no NaN


def _show(values: Any) -> str:
    if isinstance(values, np.ndarray):
        values = values.tolist()
    if isinstance(values, (list, tuple)):
        return "[" + ", ".join(str(v) for v in values) + "]"
    return repr(values)
