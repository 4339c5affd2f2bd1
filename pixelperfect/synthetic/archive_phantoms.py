"""Phantom radiographs stored the way archives hold them: DICOM in the transfer syntaxes of real CR/DX archives.

Each :data:`ARCHIVE_KINDS` entry is one way of storing a film: uncompressed explicit VR little endian, 8-bit JPEG
baseline at 1024² (the RSNA Pneumonia challenge's own files), 12-bit JPEG lossless SV1, 12-bit JPEG 2000 lossless
and lossy (three quality layers), JPEG-LS lossless and RLE at 2800×2300 (a typical CR/DX plate: ``rows`` x
``columns``, portrait or landscape). Even indices are MONOCHROME2, odd ones MONOCHROME1 (inverted stored values), as in
:func:`pixelperfect.synthetic.phantoms.write_dicom`. Non-square films are the centre crop of a square phantom of the
long side, so masks stay exact; boxes are clipped to the crop.

Encoders are what is installed: Pillow (JPEG baseline), imagecodecs (JPEG lossless, JPEG-LS; libjpeg-turbo and
CharLS), pylibjpeg-openjpeg (JPEG 2000), pydicom (RLE). :func:`encoder_missing` names the package a kind needs.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from pixelperfect.pipeline.decode import codecs
from pixelperfect.synthetic.phantoms import Phantom, display_uint8, make_phantom, phantom_dataset


@dataclass(frozen=True)
class ArchiveKind:
    """One storage: ``uid_name`` (its transfer syntax by pydicom.uid's name; :attr:`syntax` the UID), ``bits``
    stored (8 or 12), ``shape`` ``(rows, columns)``, ``lossy`` (the stored values differ from the phantom's),
    ``package`` (the encoder it needs)."""

    name: str
    uid_name: str
    bits: int
    shape: tuple[int, int]
    lossy: bool = False
    package: str | None = None

    @property
    def syntax(self) -> str:
        """The transfer syntax UID (pydicom is imported when a kind is first written, not with this module)."""
        from pydicom import uid

        return str(getattr(uid, self.uid_name))


CR_SHAPE = (2300, 2800)  # rows x columns of a 35 x 43 cm plate read at ~0.15 mm, landscape
ARCHIVE_KINDS: dict[str, ArchiveKind] = {
    k.name: k
    for k in (
        ArchiveKind("explicit_le", "ExplicitVRLittleEndian", 12, CR_SHAPE),
        ArchiveKind("jpeg_baseline", "JPEGBaseline8Bit", 8, (1024, 1024), lossy=True, package="PIL"),
        ArchiveKind("jpeg_lossless_sv1", "JPEGLosslessSV1", 12, CR_SHAPE, package="imagecodecs"),
        ArchiveKind("j2k_lossless", "JPEG2000Lossless", 12, CR_SHAPE, package="openjpeg"),
        ArchiveKind("j2k_lossy", "JPEG2000", 12, CR_SHAPE, lossy=True, package="openjpeg"),
        ArchiveKind("jpeg_ls", "JPEGLSLossless", 12, CR_SHAPE, package="imagecodecs"),
        ArchiveKind("rle", "RLELossless", 12, CR_SHAPE),
    )
}
_PACKAGE_NAMES = {"PIL": "pillow", "imagecodecs": "imagecodecs", "openjpeg": "pylibjpeg-openjpeg"}
JPEG_QUALITY = 90
#: Compression ratio of each quality layer of the lossy JPEG 2000 kind, coarse to fine (LRCP progression): the
#: whole stream is 1:15 (archives use ~10-20); a reduced decode reads only the first layers (codecs.reduced_layers).
J2K_LOSSY_RATIOS = (60.0, 30.0, 15.0)


def encoder_missing(kind: ArchiveKind) -> str | None:
    """The pip package ``kind``'s encoder needs when it is not installed, else ``None``."""
    if kind.package and not codecs.available(kind.package):
        return _PACKAGE_NAMES[kind.package]
    return None


def crop_phantom(phantom: Phantom, shape: tuple[int, int]) -> Phantom:
    """The centre ``shape`` = ``(rows, columns)`` crop of a square phantom; boxes clipped to it (empty ones
    dropped), the mask cropped with the image, so it stays exact."""
    rows, cols = shape
    size_r, size_c = phantom.image.shape
    if rows > size_r or cols > size_c:
        raise ValueError(f"crop {shape} is larger than the phantom {phantom.image.shape}")
    top, left = (size_r - rows) // 2, (size_c - cols) // 2
    boxes = []
    for x1, y1, x2, y2 in phantom.boxes:
        box = (max(x1 - left, 0), max(y1 - top, 0), min(x2 - left, cols), min(y2 - top, rows))
        if box[2] > box[0] and box[3] > box[1]:
            boxes.append(box)
    window = (slice(top, top + rows), slice(left, left + cols))
    return replace(phantom, image=phantom.image[window].copy(), mask=phantom.mask[window].copy(), boxes=boxes)


def archive_phantom(
    kind: str | ArchiveKind, index: int, *, seed: int = 0, shape: tuple[int, int] | None = None
) -> tuple[bytes, Phantom]:
    """Phantom ``index`` as a DICOM file of ``kind``: ``(file bytes, the phantom at the file's size)``.
    ``shape``: ``(rows, columns)`` instead of the kind's own (tests use small films)."""
    spec = ARCHIVE_KINDS[kind] if isinstance(kind, str) else kind
    if shape is not None:
        spec = replace(spec, shape=shape)
    missing = encoder_missing(spec)
    if missing:
        raise RuntimeError(f"archive kind {spec.name} needs the package {missing} to encode")
    rows, cols = spec.shape
    phantom = make_phantom(index, seed=seed, size=max(rows, cols))
    if (rows, cols) != phantom.image.shape:
        phantom = crop_phantom(phantom, (rows, cols))
    ds = phantom_dataset(phantom, index=index, seed=seed)
    stored = np.frombuffer(ds.PixelData, "<u2").reshape(rows, cols)
    if spec.bits == 8:
        stored = display_uint8(phantom.image)
        stored = 255 - stored if index % 2 else stored  # MONOCHROME1: inverted, as the 12-bit kinds
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
        for tag in ("WindowCenter", "WindowWidth"):  # like the RSNA files: no VOI, the full range is shown
            delattr(ds, tag)
        ds.PixelData = stored.tobytes()
    _encode(ds, spec, stored)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue(), phantom


def _encode(ds: object, spec: ArchiveKind, stored: np.ndarray) -> None:
    from pydicom.encaps import encapsulate
    from pydicom.uid import UID, RLELossless

    if spec.name == "explicit_le":
        return
    if spec.syntax == RLELossless:
        ds.compress(RLELossless, stored)  # type: ignore[attr-defined]
        return
    if spec.syntax == codecs.JPEG_BASELINE:
        from PIL import Image

        out = io.BytesIO()
        Image.fromarray(stored).save(out, format="JPEG", quality=JPEG_QUALITY)
        frame: bytes | bytearray = out.getvalue()
    elif spec.syntax in (codecs.J2K_LOSSLESS, codecs.J2K):
        import openjpeg

        ratios = list(J2K_LOSSY_RATIOS) if spec.lossy else None  # pylibjpeg-openjpeg's progression: LRCP
        frame = openjpeg.encode(stored, bits_stored=spec.bits, compression_ratios=ratios)
    else:
        import imagecodecs

        if spec.syntax == codecs.JPEG_LOSSLESS_SV1:
            frame = imagecodecs.jpeg8_encode(stored, lossless=True, predictor=1, bitspersample=spec.bits)
        else:
            frame = imagecodecs.jpegls_encode(stored)
    ds.PixelData = encapsulate([bytes(frame)])  # type: ignore[attr-defined]
    ds["PixelData"].VR = "OB"  # type: ignore[index]
    ds.file_meta.TransferSyntaxUID = UID(spec.syntax)  # type: ignore[attr-defined]
    if spec.lossy:
        ds.LossyImageCompression = "01"  # type: ignore[attr-defined]
        method = "ISO_10918_1" if spec.syntax == codecs.JPEG_BASELINE else "ISO_15444_1"
        ds.LossyImageCompressionMethod = method  # type: ignore[attr-defined]


def write_archive(out: Path, n: int, *, kinds: list[str] | None = None, seed: int = 0) -> dict[str, list[Path]]:
    """Write ``n`` phantoms per kind under ``out/<kind>/<id>.dcm`` with ``out/<kind>/masks/<id>.png``; kinds whose
    encoder is not installed are skipped. Returns the files written per kind."""
    import cv2

    written: dict[str, list[Path]] = {}
    for name in kinds or list(ARCHIVE_KINDS):
        spec = ARCHIVE_KINDS[name]
        if encoder_missing(spec):
            continue
        folder = Path(out) / name
        (folder / "masks").mkdir(parents=True, exist_ok=True)
        written[name] = []
        for index in range(n):
            data, phantom = archive_phantom(spec, index, seed=seed)
            path = folder / f"{phantom.id}.dcm"
            path.write_bytes(data)
            cv2.imwrite(str(folder / "masks" / f"{phantom.id}.png"), phantom.mask.astype(np.uint8) * 255)
            written[name].append(path)
    return written


def rsna_dicom(pixels: np.ndarray, patient_id: str, *, quality: int = JPEG_QUALITY) -> bytes:
    """An 8-bit ``(H, W)`` image as the RSNA Pneumonia challenge stores its films: a Secondary Capture DICOM,
    MONOCHROME2, 8 bits, no VOI, JPEG baseline (``quality``). ``patient_id`` is written in clear (test data)."""
    from PIL import Image
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import UID, generate_uid

    if pixels.dtype != np.uint8 or pixels.ndim != 2:
        raise ValueError(f"an RSNA film is (H, W) uint8, got {pixels.dtype} {pixels.shape}")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.7")  # Secondary Capture Image Storage
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[f"pixelperfect-rsna-{patient_id}"])
    meta.TransferSyntaxUID = UID(codecs.JPEG_BASELINE)
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.PatientID, ds.Modality, ds.ViewPosition, ds.BodyPartExamined = patient_id, "CR", "PA", "CHEST"
    ds.ConversionType = "WSD"
    ds.Rows, ds.Columns = pixels.shape
    ds.PixelSpacing = [0.168, 0.168]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=quality)
    ds.PixelData = encapsulate([out.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.LossyImageCompression, ds.LossyImageCompressionMethod = "01", "ISO_10918_1"
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
