"""DICOM -> the display image a radiologist's viewer shows, through pydicom.

Order of operations (DICOM PS3.3 C.11): stored values (BitsStored and signed PixelRepresentation honoured by
pydicom's pixel handlers, compressed transfer syntaxes decoded by its plugins: pylibjpeg-libjpeg for JPEG
baseline/extended/lossless and JPEG-LS, pylibjpeg-openjpeg for JPEG 2000, pylibjpeg-rle / pydicom for RLE) ->
modality LUT (rescale slope/intercept or Modality LUT Sequence) -> VOI (VOI LUT Sequence, else window
centre/width with its VOI LUT Function; ``window_index`` picks among several) -> polarity (MONOCHROME1 is
inverted so that bright = dense, as for MONOCHROME2).

With a VOI the result is the ``uint8`` viewer image (0 black, 255 white). Without one it is ``float32``
modality values (inverted for MONOCHROME1), which :func:`~pixelperfect.pipeline.steps.to_uint8` maps min-max,
as a viewer's default full-range window does. Patient identifiers are kept only as hashes; names never.
"""

from __future__ import annotations

import hashlib
import io
from typing import Any

import numpy as np

from pixelperfect.pipeline.decode import CorruptImageError, DecodedImage, UnsupportedImageError, is_dicom
from pixelperfect.pipeline.spacing import dicom_spacing_meta

#: Identifiers kept on the image row, hashed (meta key): the hash links images of one patient or study without
#: revealing them.
HASHED_IDENTIFIERS = {
    "PatientID": "patient_id_hash",
    "AccessionNumber": "accession_hash",
    "StudyInstanceUID": "study_uid_hash",
}
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R BT.601, as DICOM's YBR_FULL


def hash_identifier(value: str) -> str:
    """A DICOM identifier as a 16-hex-digit sha256 prefix (unsalted: stable across runs), never in clear."""
    return hashlib.sha256(value.encode()).hexdigest()[:16]


def decode_dicom(
    data: bytes,
    key: str,
    *,
    max_pixels: int,
    frame: int | None = None,
    colour_to_grey: bool = False,
    window_index: int = 0,
) -> DecodedImage:
    """Decode a DICOM object to a display image (see the module docstring for the rules).

    ``frame``: which frame of a multi-frame object to take (``None``: multi-frame is an error).
    ``colour_to_grey``: convert RGB/YBR/palette colour to luminance instead of refusing it.
    ``window_index``: which window centre/width or VOI LUT to apply when the file holds several (the first if
    the file has fewer). The pixel count is checked from the header before any pixel is decoded.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except InvalidDicomError as exc:
        raise CorruptImageError(key, "not_dicom", str(exc)) from None
    except Exception as exc:
        reason = "dicom_unreadable" if is_dicom(data) else "not_dicom"
        raise CorruptImageError(key, reason, f"{type(exc).__name__}: {exc}") from None
    pixel_tags = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
    if not any(tag in ds for tag in pixel_tags):
        if not is_dicom(data) and not any(tag in ds for tag in ("SOPClassUID", "Modality", "Rows")):
            raise CorruptImageError(key, "not_dicom", "no DICOM preamble and no DICOM attributes")
        if is_dicom(data) and len(ds) == 0:  # nothing after the meta header: the file was cut there
            raise CorruptImageError(key, "truncated", "the file ends in or right after its meta header")
        raise UnsupportedImageError(key, "no_pixel_data", "the DICOM object has no pixel data element")
    _ensure_transfer_syntax(ds)
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if rows <= 0 or cols <= 0:
        raise CorruptImageError(key, "zero_size", f"Rows x Columns = {rows} x {cols}")
    if rows * cols > max_pixels:
        raise UnsupportedImageError(
            key, "too_large", f"{cols}x{rows} = {rows * cols} px exceeds the limit of {max_pixels} px"
        )
    if frames > 1 and frame is None:
        raise UnsupportedImageError(key, "multi_frame", f"{frames} frames; pass frame=0 to take the first")
    if frame is not None and not 0 <= frame < frames:
        raise UnsupportedImageError(key, "frame_index", f"frame {frame} requested, the object has {frames}")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    monochrome = photometric in ("MONOCHROME1", "MONOCHROME2") and samples == 1
    if not monochrome and not colour_to_grey:
        raise UnsupportedImageError(
            key, "colour", f"photometric {photometric} with {samples} samples; radiographs are greyscale"
        )
    arr = _decode_pixels(ds, key, frame if frames > 1 else None)
    meta = _metadata(ds, photometric, frames, frame)
    if not monochrome:
        return DecodedImage(_to_luminance(arr, ds, photometric, key), meta)
    return DecodedImage(_display(arr, ds, photometric, window_index, meta, key), meta)


def _ensure_transfer_syntax(ds: Any) -> None:
    """Files without a meta header (``no_meta.dcm``) get the transfer syntax their dataset was parsed in."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        return
    implicit, little = getattr(ds, "original_encoding", (True, True))
    if meta is None:
        ds.file_meta = meta = FileMetaDataset()
    meta.TransferSyntaxUID = (
        ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
    )


def _decode_pixels(ds: Any, key: str, index: int | None) -> np.ndarray:
    from pydicom.pixels import pixel_array
    from pydicom.pixels.decoders.base import get_decoder

    syntax = ds.file_meta.TransferSyntaxUID
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise UnsupportedImageError(
            key, "missing_codec", f"no decoder for transfer syntax {syntax.name} ({syntax})"
        ) from None
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies) or "no plugin installed"
        raise UnsupportedImageError(key, "missing_codec", f"{syntax.name} ({syntax}) needs: {missing}")
    try:
        return pixel_array(ds, index=index)
    except (RuntimeError, NotImplementedError) as exc:  # every available plugin failed on this stream
        raise UnsupportedImageError(key, "codec_error", f"{syntax.name}: {_first_line(exc)}") from None
    except (ValueError, EOFError) as exc:
        text = str(exc)
        reason = "truncated" if "less than expected" in text or "truncat" in text.lower() else "dicom_pixels"
        raise CorruptImageError(key, reason, _first_line(exc)) from None
    except Exception as exc:
        raise CorruptImageError(key, "dicom_pixels", f"{type(exc).__name__}: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return " ".join(lines[:3])[:300] or type(exc).__name__


def _to_luminance(arr: np.ndarray, ds: Any, photometric: str, key: str) -> np.ndarray:
    """RGB / YBR (pydicom converts YBR to RGB) / palette colour -> ``float32`` luminance."""
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        arr = apply_color_lut(arr, ds)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise UnsupportedImageError(key, "colour", f"cannot read {photometric} pixels of shape {arr.shape}")
    return np.asarray(arr, np.float32) @ _LUMA


def _display(
    arr: np.ndarray, ds: Any, photometric: str, window_index: int, meta: dict[str, Any], key: str
) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut, apply_voi

    try:
        values = np.asarray(apply_modality_lut(arr, ds), np.float64)
    except Exception as exc:
        raise CorruptImageError(key, "bad_lut", f"modality LUT: {_first_line(exc)}") from None
    if not np.isfinite(values).all():
        raise CorruptImageError(key, "nan_pixels", "the modality LUT produced NaN or infinite values")
    display: np.ndarray | None = None
    lut_items = ds.get("VOILUTSequence") or []
    if lut_items:
        index = window_index if window_index < len(lut_items) else 0
        try:
            out = apply_voi(np.round(values).astype(np.int64), ds, index=index)  # a LUT is indexed by integers
            bits = int(lut_items[index].LUTDescriptor[2])
        except Exception as exc:
            raise CorruptImageError(key, "bad_lut", f"VOI LUT: {_first_line(exc)}") from None
        display = np.asarray(out, np.float64) * (255.0 / (2**bits - 1))
        meta.update(voi="lut", window_index=index)
    else:
        window = _window(ds, window_index)
        if window is not None:
            centre, width, function, index = window
            display = apply_window(values, centre, width, function)
            meta.update(voi="window", window=[centre, width], window_index=index, voi_function=function)
    if display is None:
        meta["voi"] = None
        if photometric == "MONOCHROME1":
            values = values.max() + values.min() - values
        return values.astype(np.float32)
    if photometric == "MONOCHROME1":
        display = 255.0 - display
    return np.clip(display + 0.5, 0, 255).astype(np.uint8)


def _window(ds: Any, index: int) -> tuple[float, float, str, int] | None:
    """The ``index``-th (else the first) valid window centre/width and the VOI LUT function, or ``None``."""
    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        return None
    from pydicom.multival import MultiValue

    centres, widths = (
        [*v] if isinstance(v, (MultiValue, list, tuple)) else [v] for v in (ds.WindowCenter, ds.WindowWidth)
    )
    count = min(len(centres), len(widths))
    if count == 0:
        return None
    index = index if index < count else 0
    function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
    centre, width = float(centres[index]), float(widths[index])
    if not (np.isfinite(centre) and np.isfinite(width)) or width <= 0 or (function == "LINEAR" and width < 1):
        return None  # an invalid window is ignored, as viewers do
    return centre, width, function, index


def apply_window(values: np.ndarray, centre: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """Window ``values`` to display units 0..255 (``float64``) by DICOM PS3.3 C.11.2.1.2.

    LINEAR: ``((x - (c - 0.5)) / (w - 1) + 0.5) * 255`` clipped (needs ``w >= 1``); LINEAR_EXACT:
    ``((x - c) / w + 0.5) * 255`` clipped; SIGMOID: ``255 / (1 + exp(-4 (x - c) / w))``.
    """
    x = np.asarray(values, np.float64)
    if function == "SIGMOID":
        return 255.0 / (1.0 + np.exp(-4.0 * (x - centre) / width))
    if function == "LINEAR_EXACT":
        return np.clip(((x - centre) / width + 0.5) * 255.0, 0, 255)
    if width == 1:
        return np.where(x <= centre - 0.5, 0.0, 255.0)
    return np.clip(((x - (centre - 0.5)) / (width - 1) + 0.5) * 255.0, 0, 255)


def _metadata(ds: Any, photometric: str, frames: int, frame: int | None) -> dict[str, Any]:
    def text(tag: str) -> str | None:
        value = str(ds.get(tag, "") or "").strip()
        return value or None

    meta: dict[str, Any] = {
        "format": "dicom",
        "bits": int(ds.get("BitsStored", 0) or 0) or None,
        "bits_allocated": int(ds.get("BitsAllocated", 0) or 0) or None,
        "signed": bool(int(ds.get("PixelRepresentation", 0) or 0)),
        "photometric": photometric,
        "modality": text("Modality"),
        "view_position": text("ViewPosition"),
        "body_part": text("BodyPartExamined"),
        **dicom_spacing_meta(ds),  # pixel_spacing (raw), spacing_mm, spacing_source[, spacing_warning]
        "transfer_syntax": str(ds.file_meta.TransferSyntaxUID),
        "frames": frames,
    }
    if frame is not None:
        meta["frame"] = frame
    if "RescaleSlope" in ds or "RescaleIntercept" in ds:
        meta["rescale"] = [float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)]
    for tag, name in HASHED_IDENTIFIERS.items():
        value = text(tag)
        if value:
            meta[name] = hash_identifier(value)
    return meta
