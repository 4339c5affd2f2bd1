"""DICOM -> the display image a radiologist's viewer shows, through pydicom.

Order of operations (DICOM PS3.3 C.11): stored values (compressed greyscale frames by the fastest installed decoder of
:mod:`~pixelperfect.pipeline.decode.codecs`, optionally at reduced resolution, signed ones as pydicom makes them;
everything else, and any frame those refuse, by pydicom's pixel handlers and plugins, which honour BitsStored and signed
PixelRepresentation) -> modality LUT (rescale slope/intercept or Modality LUT Sequence) -> VOI (VOI LUT Sequence, else
window centre/width with its VOI LUT Function; ``window_index`` picks among several) -> polarity (MONOCHROME1 is
inverted so that bright = dense, as for MONOCHROME2).

With a VOI the result is the ``uint8`` viewer image (0 black, 255 white). Without one it is ``float32``
modality values (inverted for MONOCHROME1), which :func:`~pixelperfect.pipeline.preprocess.steps.to_uint8` maps min-max,
as a viewer's default full-range window does. Patient identifiers are kept only as hashes; names never.
The modality LUT, VOI and polarity are :mod:`~pixelperfect.pipeline.decode.voi`'s.
"""

from __future__ import annotations

import functools
import hashlib
import io
from dataclasses import dataclass
from typing import Any

import numpy as np

from pixelperfect.pipeline.decode import codecs
from pixelperfect.pipeline.decode.image import (
    DEFAULT_MAX_PIXELS,
    CorruptImageError,
    DecodedImage,
    UnsupportedImageError,
    is_dicom,
)
from pixelperfect.pipeline.decode.limits import DEFAULT_LIMITS, DecodeLimits, frame_bytes_ok, precheck_dicom
from pixelperfect.pipeline.decode.spacing import dicom_spacing_meta
from pixelperfect.pipeline.decode.voi import apply_window, display, first_line

__all__ = [
    "ParsedDicom",
    "apply_window",
    "check_dataset",
    "decode_dicom",
    "decode_stored",
    "finish_dicom",
    "parse_dicom",
    "read_header",
]

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


@dataclass(frozen=True)
class ParsedDicom:
    """A DICOM object read up to its pixels: the dataset, the frame asked for, and its image pixel attributes, each
    read from the dataset once (photometric interpretation, greyscale or not: one sample, MONOCHROME1/2)."""

    ds: Any
    frames: int
    frame: int | None
    photometric: str
    monochrome: bool
    max_pixels: int = DEFAULT_MAX_PIXELS
    rows: int = 0
    columns: int = 0
    bits_allocated: int = 0
    bits_stored: int = 0
    representation: int = 0  # PixelRepresentation: 0 unsigned, 1 signed (two's complement)
    syntax: str = ""  # the transfer syntax UID

    @property
    def index(self) -> int | None:
        """The frame to decode: ``None`` for a single-frame object."""
        return self.frame if self.frames > 1 else None


def decode_dicom(
    data: bytes,
    key: str,
    *,
    max_pixels: int,
    frame: int | None = None,
    colour_to_grey: bool = False,
    window_index: int = 0,
    model_side: int | None = None,
    limits: DecodeLimits = DEFAULT_LIMITS,
) -> DecodedImage:
    """Decode a DICOM object to a display image (see the module docstring for the rules).

    ``frame``: which frame of a multi-frame object to take (``None``: multi-frame is an error).
    ``colour_to_grey``: convert RGB/YBR/palette colour to luminance instead of refusing it.
    ``window_index``: which window centre/width or VOI LUT to apply when the file holds several (the first if
    the file has fewer). ``model_side``: decode JPEG 2000 / JPEG at the smallest resolution whose long side is
    still ``>= model_side`` (:mod:`~pixelperfect.pipeline.decode.codecs`). The pixel count is checked from the
    header before any pixel is decoded. A file in a compressed transfer syntax that a fast decoder takes is read by
    pydicom's element parser for the attributes the decode uses only (:func:`read_header`), with the same result.
    Before either, :func:`~pixelperfect.pipeline.decode.limits.precheck_dicom` refuses an object over ``limits``
    (inflated size, sequence depth, element count).
    """
    precheck_dicom(data, key, limits)
    header = read_header(data)
    if header is not None:
        image = _decode_header(header, key, max_pixels=max_pixels, frame=frame, colour_to_grey=colour_to_grey,
                               window_index=window_index, model_side=model_side)  # fmt: skip
        if image is not None:
            return image
    try:
        parsed = parse_dicom(data, key, max_pixels=max_pixels, frame=frame, colour_to_grey=colour_to_grey)
        stored = decode_stored(parsed, key, model_side=model_side)
        return finish_dicom(parsed, stored.array, key, window_index=window_index, scale=stored.scale)
    except NotImplementedError as exc:  # pydicom converts a value on first access: an element of an unknown VR
        if "Value Representation" not in str(exc):
            raise
        raise CorruptImageError(key, "bad_attribute", first_line(exc)) from None


#: The attributes the decode reads (checks, stored values, modality rescale, window, spacing, metadata, hashes).
HEADER_KEYWORDS = (
    "SpecificCharacterSet",
    "Modality",
    "AccessionNumber",
    "PatientID",
    "BodyPartExamined",
    "EstimatedRadiographicMagnificationFactor",
    "ImagerPixelSpacing",
    "ViewPosition",
    "StudyInstanceUID",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "NumberOfFrames",
    "Rows",
    "Columns",
    "PixelSpacing",
    "BitsAllocated",
    "BitsStored",
    "PixelRepresentation",
    "WindowCenter",
    "WindowWidth",
    "RescaleIntercept",
    "RescaleSlope",
    "VOILUTFunction",
    "PixelData",
)
#: Attributes whose presence sends a file to :func:`parse_dicom`'s whole dataset: the LUT sequences (pydicom applies
#: them from the dataset) and pixel data other than ``PixelData``.
WHOLE_DATASET_KEYWORDS = ("ModalityLUTSequence", "VOILUTSequence", "FloatPixelData", "DoubleFloatPixelData")
_TRANSFER_SYNTAX_TAG = 0x00020010
_PIXEL_DATA_TAG = 0x7FE00010


@functools.lru_cache(maxsize=1)
def _header_tags() -> tuple[frozenset[int], frozenset[int]]:
    from pydicom.datadict import tag_for_keyword

    def tags(keywords: tuple[str, ...]) -> frozenset[int]:
        return frozenset(int(tag_for_keyword(k) or 0) for k in keywords)

    return tags(HEADER_KEYWORDS), tags(WHOLE_DATASET_KEYWORDS)


def read_header(data: bytes) -> Any | None:
    """The decode's attributes (:data:`HEADER_KEYWORDS`) and pixel data of a Part 10 file whose transfer syntax a
    fast decoder of :mod:`.codecs` takes, as a pydicom ``Dataset`` of those elements only: pydicom's element parser
    (``filereader.data_element_generator``) walks the file once, and pydicom converts a value when it is first read,
    without building the rest of the dataset. ``None`` for any other file (another transfer syntax, a LUT sequence,
    anything the element parser refuses): :func:`parse_dicom` reads it whole."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.filereader import data_element_generator
    from pydicom.tag import BaseTag
    from pydicom.uid import UID

    if len(data) < 144 or data[128:132] != b"DICM":
        return None
    wanted, refused = _header_tags()
    elements: dict[BaseTag, Any] = {}
    syntax: str | None = None
    fp = io.BytesIO(data)
    fp.seek(132)
    try:  # the meta group is explicit VR little endian, and so is the dataset of every syntax of codecs.CODECS
        for raw in data_element_generator(fp, False, True):
            tag = int(raw.tag)  # a plain int: BaseTag compares in Python
            if tag == _TRANSFER_SYNTAX_TAG:
                syntax = bytes(raw.value or b"").decode("ascii").strip(" \x00")
            elif tag > 0x0002FFFF and syntax not in codecs.CODECS:
                return None  # another syntax, or none named: its dataset may be encoded otherwise
            elif tag in refused:
                return None
            elif tag in wanted:
                elements[raw.tag] = raw
    except Exception:  # whatever pydicom's element parser refuses: the whole-dataset read names the problem
        return None
    if syntax is None or syntax not in codecs.CODECS or _PIXEL_DATA_TAG not in elements:
        return None
    ds = Dataset(elements)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID(syntax)
    ds.set_original_encoding(False, True)
    return ds


def _decode_header(
    ds: Any,
    key: str,
    *,
    max_pixels: int,
    frame: int | None,
    colour_to_grey: bool,
    window_index: int,
    model_side: int | None,
) -> DecodedImage | None:
    """The image of a :func:`read_header` dataset by a fast decoder; ``None`` whenever this path does not end in an
    image: the caller's whole-dataset path then decides, and names any error (a file that fails here fails there the
    same way)."""
    try:
        parsed = check_dataset(ds, key, max_pixels=max_pixels, frame=frame, colour_to_grey=colour_to_grey)
        stored = _decode_fast(parsed, key, model_side)
        if stored is None:
            return None
        return finish_dicom(parsed, stored.array, key, window_index=window_index, scale=stored.scale)
    except Exception:
        return None


def parse_dicom(data: bytes, key: str, *, max_pixels: int, frame: int | None, colour_to_grey: bool) -> ParsedDicom:
    """Read the whole dataset and check it before any pixel is decoded: pixel data present, then
    :func:`check_dataset`. Raises the typed errors of :mod:`.image`."""
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
    return check_dataset(ds, key, max_pixels=max_pixels, frame=frame, colour_to_grey=colour_to_grey)


def check_dataset(ds: Any, key: str, *, max_pixels: int, frame: int | None, colour_to_grey: bool) -> ParsedDicom:
    """The checks before any pixel is decoded: a size within ``max_pixels``, the frame choice, greyscale (unless
    ``colour_to_grey``). Raises the typed errors of :mod:`.image`."""
    rows, cols = _integer(ds, "Rows", 0, key), _integer(ds, "Columns", 0, key)
    frames = _integer(ds, "NumberOfFrames", 1, key)
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
    samples = _integer(ds, "SamplesPerPixel", 1, key)
    bits_allocated = _integer(ds, "BitsAllocated", 0, key)
    if not frame_bytes_ok(rows, cols, samples, bits_allocated, max_pixels):
        raise UnsupportedImageError(
            key, "too_large", f"one frame declares {cols}x{rows} px x {samples} samples x {bits_allocated} bits"
        )
    monochrome = photometric in ("MONOCHROME1", "MONOCHROME2") and samples == 1
    if not monochrome and not colour_to_grey:
        raise UnsupportedImageError(
            key, "colour", f"photometric {photometric} with {samples} samples; radiographs are greyscale"
        )
    return ParsedDicom(
        ds,
        frames,
        frame,
        photometric,
        monochrome,
        max_pixels,
        rows=rows,
        columns=cols,
        bits_allocated=bits_allocated,
        bits_stored=_integer(ds, "BitsStored", 0, key),
        representation=_integer(ds, "PixelRepresentation", 0, key),
        syntax=str(ds.file_meta.TransferSyntaxUID),
    )


def _integer(ds: Any, keyword: str, default: int, key: str) -> int:
    """An image pixel attribute as one integer (``default`` when absent or empty). ``bad_attribute`` for a value
    that is none: several values (``1\\2``), text (an IS of ``"abc"``), infinity, or one below 0 or over 2**32."""
    from pydicom.errors import BytesLengthException

    value: Any = "(unconvertible)"
    try:  # pydicom converts the value when it is first read: an IS of "inf" fails there
        value = ds.get(keyword, None)
        if value is None or value == "":
            return default
        number = int(value)
    # NotImplementedError: an unknown VR; BytesLengthException: a binary VR whose length is no multiple of its size
    # (a US attribute written as UL in 2 bytes, docs/fuzzing.md F15)
    except (TypeError, ValueError, OverflowError, NotImplementedError, BytesLengthException):
        raise CorruptImageError(key, "bad_attribute", f"{keyword} is no single integer: {str(value)[:40]!r}") from None
    if not 0 <= number < 2**32:
        raise CorruptImageError(key, "bad_attribute", f"{keyword} = {number} is out of range")
    return number or default  # 0 frames or samples: one, as before


def fast_frame(parsed: ParsedDicom) -> tuple[bytes, codecs.FrameInfo] | None:
    """The frame's codestream and what the dataset says about it, when a fast decoder may take it: greyscale,
    unsigned or signed (PixelRepresentation 0 / 1), BitsAllocated 8/16, a compressed syntax of
    :data:`codecs.CODECS`. ``None`` otherwise."""
    ds = parsed.ds
    bits_allocated, bits_stored = parsed.bits_allocated, parsed.bits_stored
    eligible = (
        parsed.monochrome
        and parsed.syntax in codecs.CODECS
        and parsed.representation in (0, 1)
        and bits_allocated in (8, 16)
        and 1 <= bits_stored <= bits_allocated
        and "PixelData" in ds
    )
    if not eligible:
        return None
    from pydicom.encaps import get_frame

    try:
        stream = get_frame(ds.PixelData, parsed.index or 0, number_of_frames=parsed.frames)
    except Exception:  # a broken encapsulation: pydicom's own path gives the reason
        return None
    info = codecs.FrameInfo(parsed.rows, parsed.columns, bits_allocated, bits_stored, signed=parsed.representation == 1)
    return bytes(stream), info


def decode_stored(parsed: ParsedDicom, key: str, *, model_side: int | None = None) -> codecs.StoredFrame:
    """The frame's stored values: a fast decoder of :mod:`.codecs` where one applies, else pydicom's."""
    stored = _decode_fast(parsed, key, model_side)
    if stored is not None:
        return stored
    return codecs.StoredFrame(_decode_pixels(parsed.ds, key, parsed.index), "pydicom")


def _decode_fast(parsed: ParsedDicom, key: str, model_side: int | None) -> codecs.StoredFrame | None:
    """The frame's stored values by a fast decoder of :mod:`.codecs`, or ``None`` where none applies or all
    refused the stream; raises for a codestream larger than the limit or cut short."""
    found = fast_frame(parsed)
    if found is None:
        return None
    declared = codecs.stream_shape(parsed.syntax, found[0])
    if declared and declared[0] * declared[1] > parsed.max_pixels:  # a codestream larger than its dataset
        raise UnsupportedImageError(
            key, "too_large", f"the codestream declares {declared[1]}x{declared[0]} px, over {parsed.max_pixels}"
        )
    try:
        return codecs.decode_frame(parsed.syntax, found[0], found[1], model_side=model_side)
    except codecs.TruncatedStreamError as exc:
        raise CorruptImageError(key, "truncated", str(exc)) from None


def finish_dicom(
    parsed: ParsedDicom, arr: np.ndarray, key: str, *, window_index: int = 0, scale: int = 1
) -> DecodedImage:
    """Stored values ``arr`` (``(h, w)``, or ``(h, w, 3)`` colour) -> the display image and its metadata.
    ``scale`` > 1: ``arr`` is a reduced decode (the original size is the dataset's Rows x Columns)."""
    ds, photometric = parsed.ds, parsed.photometric
    expected = (-(-parsed.rows // scale), -(-parsed.columns // scale))
    if arr.shape[:2] != expected or arr.ndim != (2 if parsed.monochrome else arr.ndim if arr.ndim in (2, 3) else 0):
        raise CorruptImageError(
            key,
            "dicom_pixels",
            f"the pixels decode to {arr.shape}, the dataset declares {parsed.rows}x{parsed.columns}",
        )
    meta = _metadata(parsed, key)
    original = (parsed.rows, parsed.columns)
    if scale != 1:
        meta.update(decoded_shape=[int(arr.shape[0]), int(arr.shape[1])], decode_scale=scale)
    if not parsed.monochrome:
        return DecodedImage(_to_luminance(arr, ds, photometric, key), meta, original, scale)
    return DecodedImage(display(arr, ds, photometric, window_index, meta, key), meta, original, scale)


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
    from pydicom.uid import UID

    # a UID whatever its VR says: a meta group that encodes (0002,0010) as SH hands back a str (docs/fuzzing.md F14)
    syntax = UID(str(ds.file_meta.TransferSyntaxUID))
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise UnsupportedImageError(
            key, "missing_codec", f"no decoder for transfer syntax {syntax.name} ({syntax}){_package_hint(syntax)}"
        ) from None
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies) or "no plugin installed"
        raise UnsupportedImageError(
            key, "missing_codec", f"{syntax.name} ({syntax}) needs: {missing}{_package_hint(syntax)}"
        )
    try:
        return pixel_array(ds, index=index)
    except (RuntimeError, NotImplementedError) as exc:  # every available plugin failed on this stream
        raise UnsupportedImageError(key, "codec_error", f"{syntax.name}: {first_line(exc)}") from None
    except (ValueError, EOFError) as exc:
        text = str(exc)
        reason = "truncated" if "less than expected" in text or "truncat" in text.lower() else "dicom_pixels"
        raise CorruptImageError(key, reason, first_line(exc)) from None
    except Exception as exc:
        raise CorruptImageError(key, "dicom_pixels", f"{type(exc).__name__}: {first_line(exc)}") from None
    except BaseException as exc:  # a Rust plugin's panic (pylibjpeg-rle) is no Exception
        if not codecs.is_codec_panic(exc):
            raise
        raise UnsupportedImageError(
            key, "codec_error", f"{syntax.name}: the decoder panicked: {first_line(exc)}"
        ) from None


def _package_hint(syntax: str) -> str:
    package = codecs.PACKAGE_FOR.get(str(syntax))
    return f"; install {package} to read it" if package else ""


def _to_luminance(arr: np.ndarray, ds: Any, photometric: str, key: str) -> np.ndarray:
    """RGB / YBR (pydicom converts YBR to RGB) / palette colour -> ``float32`` luminance."""
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        try:
            arr = apply_color_lut(arr, ds)
        except Exception as exc:  # no or a malformed Palette Color Lookup Table module
            raise CorruptImageError(key, "bad_lut", f"palette colour LUT: {first_line(exc)}") from None
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise UnsupportedImageError(key, "colour", f"cannot read {photometric} pixels of shape {arr.shape}")
    return np.asarray(arr, np.float32) @ _LUMA


def _decimal(ds: Any, keyword: str, default: float, key: str) -> float:
    """A DS attribute as one number (``default`` when absent or empty); ``bad_attribute`` when it is none,
    ``nan_pixels`` when it is NaN or infinite."""
    from pydicom.errors import BytesLengthException

    value: Any = "(unconvertible)"
    try:
        value = ds.get(keyword, None)
        number = default if value is None or value == "" else float(value)
    except (TypeError, ValueError, OverflowError, NotImplementedError, BytesLengthException):
        raise CorruptImageError(key, "bad_attribute", f"{keyword} is no single number: {str(value)[:40]!r}") from None
    if not np.isfinite(number):  # as the modality LUT's check names it
        raise CorruptImageError(key, "nan_pixels", f"{keyword} = {number} is not finite")
    return number


def _metadata(parsed: ParsedDicom, key: str) -> dict[str, Any]:
    ds = parsed.ds

    def text(tag: str) -> str | None:
        value = str(ds.get(tag, "") or "").strip()
        return value or None

    meta: dict[str, Any] = {
        "format": "dicom",
        "bits": parsed.bits_stored or None,
        "bits_allocated": parsed.bits_allocated or None,
        "signed": bool(parsed.representation),
        "photometric": parsed.photometric,
        "modality": text("Modality"),
        "view_position": text("ViewPosition"),
        "body_part": text("BodyPartExamined"),
        **dicom_spacing_meta(ds),  # pixel_spacing (raw), spacing_mm, spacing_source[, spacing_warning]
        "transfer_syntax": str(ds.file_meta.TransferSyntaxUID),
        "frames": parsed.frames,
    }
    if parsed.frame is not None:
        meta["frame"] = parsed.frame
    if "RescaleSlope" in ds or "RescaleIntercept" in ds:
        meta["rescale"] = [_decimal(ds, "RescaleSlope", 1.0, key), _decimal(ds, "RescaleIntercept", 0.0, key)]
    for tag, name in HASHED_IDENTIFIERS.items():
        value = text(tag)
        if value:
            meta[name] = hash_identifier(value)
    return meta
