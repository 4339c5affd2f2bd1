"""DICOM -> display greyscale through pydicom: modality LUT, VOI LUT/window, MONOCHROME1 inverted."""

from __future__ import annotations

import hashlib
import io
from typing import Any

import numpy as np

from pixelperfect.pipeline.decode import CorruptImageError, DecodedImage, UnsupportedImageError


def hash_identifier(value: str) -> str:
    """DICOM identifiers are stored only as a salted-free sha256 prefix, never in clear."""
    return hashlib.sha256(value.encode()).hexdigest()[:16]


def decode_dicom(data: bytes, key: str, *, max_pixels: int, frame: int | None = None) -> DecodedImage:
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except InvalidDicomError as exc:
        raise CorruptImageError(key, "not_dicom", str(exc)) from None
    except Exception as exc:
        raise CorruptImageError(key, "dicom_unreadable", f"{type(exc).__name__}: {exc}") from None
    if "PixelData" not in ds:
        raise UnsupportedImageError(key, "no_pixel_data", "the DICOM file has no PixelData element")
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if rows * cols > max_pixels:
        raise UnsupportedImageError(key, "too_large", f"{cols}x{rows} px exceeds the limit of {max_pixels} px")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1 and frame is None:
        raise UnsupportedImageError(key, "multi_frame", f"{frames} frames; a radiograph has one")
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if samples != 1 or not photometric.startswith("MONOCHROME"):
        raise UnsupportedImageError(key, "colour", f"photometric {photometric} with {samples} samples")
    try:
        arr = ds.pixel_array
    except (NotImplementedError, RuntimeError) as exc:
        raise UnsupportedImageError(key, "missing_codec", f"{ds.file_meta.get('TransferSyntaxUID', '?')}: {exc}")
    except Exception as exc:
        raise CorruptImageError(key, "dicom_pixels", f"{type(exc).__name__}: {exc}") from None
    if frames > 1:
        arr = arr[frame or 0]
    values = apply_modality_lut(arr, ds)
    values = apply_voi_lut(values, ds, index=0).astype(np.float32)
    if not np.isfinite(values).all():
        raise CorruptImageError(key, "nan_pixels", "rescale/LUT produced NaN or infinite values")
    if photometric == "MONOCHROME1":
        values = values.max() + values.min() - values
    meta: dict[str, Any] = {
        "format": "dicom",
        "bits": int(ds.get("BitsStored", 0) or 0),
        "photometric": photometric,
        "modality": str(ds.get("Modality", "")) or None,
        "view_position": str(ds.get("ViewPosition", "")) or None,
        "pixel_spacing": [float(v) for v in ds.PixelSpacing] if "PixelSpacing" in ds else None,
        "transfer_syntax": str(ds.file_meta.get("TransferSyntaxUID", "")) if hasattr(ds, "file_meta") else None,
    }
    if "PatientID" in ds and ds.PatientID:
        meta["patient_id_hash"] = hash_identifier(str(ds.PatientID))
    return DecodedImage(values, meta)
