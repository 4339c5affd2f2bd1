"""Signed stored values (PixelRepresentation 1) through the fast decoders: the same stored values as pydicom's
``pixel_array``, bit for bit, on pydicom's real signed files and on files written here in every lossless syntax
(JPEG lossless, JPEG-LS, JPEG 2000 with a signed and with an unsigned codestream, RLE), with BitsStored below and
equal to BitsAllocated, the codestreams holding the samples sign-extended or as BitsStored-bit patterns."""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import UID, ExplicitVRLittleEndian, RLELossless, generate_uid

from pixelperfect.pipeline.decode import codecs, dicom, voi
from pixelperfect.pipeline.decode.reader import decode_image

SIGNED_REAL_FILES = [
    "MR_small_RLE.dcm",
    "MR_small_jp2klossless.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "J2K_pixelrep_mismatch.dcm",  # signed values in an unsigned 13-bit codestream
    "693_J2KI.dcm",  # 14 bits stored in a signed 16-bit codestream, three quality layers
    "JPEG2000.dcm",
]


def parsed(data: bytes) -> dicom.ParsedDicom:
    return dicom.parse_dicom(data, "k.dcm", max_pixels=10**8, frame=None, colour_to_grey=False)


def reference(data: bytes) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(pydicom.pixels.pixel_array(pydicom.dcmread(io.BytesIO(data))))


def every_decoder(data: bytes, monkeypatch: Any) -> list[str]:
    """Each installed fast decoder of the file's syntax alone must give pydicom's stored values; returns their names."""
    item = parsed(data)
    ref = reference(data)
    assert ref.dtype.kind == "i"
    found = dicom.fast_frame(item)
    assert found is not None and found[1].signed
    names = []
    for codec in codecs.codecs_for(item.syntax):
        monkeypatch.setitem(codecs.CODECS, item.syntax, [codec])
        stored = dicom.decode_stored(item, "k")
        if stored.decoder == "pydicom":  # this decoder refused the stream: pydicom's own path is the reference
            continue
        assert stored.decoder == codec.name and stored.scale == 1
        assert stored.array.dtype == ref.dtype, (codec.name, stored.array.dtype)
        assert np.array_equal(stored.array, ref), (codec.name, np.abs(stored.array.astype(int) - ref).max())
        names.append(codec.name)
    monkeypatch.undo()
    return names


@pytest.mark.parametrize("name", SIGNED_REAL_FILES)
def test_real_signed_files_match_pydicom_with_every_decoder(name: str, monkeypatch: Any) -> None:
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"pydicom test file {name} is not installed")
    data = Path(path).read_bytes()
    assert pydicom.dcmread(path, stop_before_pixels=True).PixelRepresentation == 1
    names = every_decoder(data, monkeypatch)
    assert names, f"no fast decoder took {name}"
    assert dicom.decode_stored(parsed(data), name).decoder != "pydicom"


def _signed_values(shape: tuple[int, int], bits: int, noise: float = 0.1) -> np.ndarray:
    """Signed test values, a wave plus ``noise``, over the whole ``bits``-bit range (both extremes in row 0)."""
    rows, cols = shape
    y, x = np.mgrid[0:rows, 0:cols]
    wave = np.sin(x / 9.0) * np.cos(y / 13.0) + noise * np.random.default_rng(0).standard_normal(shape)
    low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    values = np.clip(np.round(wave / np.abs(wave).max() * high), low, high).astype(np.int64)
    if noise:
        values[0, 0], values[0, 1] = low, high
    return values


def signed_dicom(kind: str, bits_allocated: int, bits_stored: int, *, patterns: bool, shape: tuple[int, int] = (96, 80),
                 noise: float = 0.1, **attrs: Any) -> bytes:  # fmt: skip
    """A MONOCHROME2 file with signed stored values in ``kind``'s syntax. ``patterns``: the codestream holds the
    values as ``bits_stored``-bit two's complement patterns (the upper bits clear); else sign-extended to
    ``bits_allocated`` bits (JPEG 2000 ``signed``: a codestream marked signed, holding the values themselves)."""
    values = _signed_values(shape, bits_stored, noise)
    signed_dtype, unsigned_dtype = np.dtype(f"int{bits_allocated}"), np.dtype(f"uint{bits_allocated}")
    extended = values.astype(signed_dtype).view(unsigned_dtype)
    samples = (extended & ((1 << bits_stored) - 1)).astype(unsigned_dtype) if patterns else extended
    precision = bits_stored if patterns else bits_allocated
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.1.1")  # DX
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits_allocated, bits_stored, bits_stored - 1
    ds.PixelRepresentation = 1
    for name, value in attrs.items():
        setattr(ds, name, value)
    ds.PixelData = samples.tobytes()
    if kind == "rle" and patterns:  # pydicom's encoder checks signed values' range: encode the patterns unsigned
        ds.PixelRepresentation = 0
        ds.compress(RLELossless, samples)
        ds.PixelRepresentation = 1
    elif kind == "rle":
        ds.compress(RLELossless, samples.view(signed_dtype))
    else:
        if kind == "jpeg_lossless_sv1":
            import imagecodecs

            stream = imagecodecs.jpeg8_encode(samples, lossless=True, predictor=1, bitspersample=precision)
            syntax = codecs.JPEG_LOSSLESS_SV1
        elif kind == "jpeg_ls":
            import imagecodecs

            stream = imagecodecs.jpegls_encode(samples)  # CharLS: the precision of the array's type
            syntax = codecs.JPEG_LS_LOSSLESS
        elif kind in ("j2k_signed", "j2k_unsigned"):
            import openjpeg

            # signed: the values in a codestream marked signed; unsigned: their patterns in an unsigned one
            source = values.astype(signed_dtype) if kind == "j2k_signed" else samples
            stream = openjpeg.encode(source, bits_stored=bits_stored if kind == "j2k_signed" else precision)
            syntax = codecs.J2K_LOSSLESS
        else:
            raise ValueError(kind)
        ds.PixelData = encapsulate([bytes(stream)])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = UID(syntax)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


CASES = [
    (kind, allocated, stored, patterns)
    for kind in ("rle", "jpeg_lossless_sv1", "jpeg_ls", "j2k_signed", "j2k_unsigned")
    for allocated, stored in ((16, 12), (16, 16), (8, 8))
    for patterns in ((False,) if kind == "j2k_signed" else (True, False))  # a signed codestream holds values
    if not (stored == allocated and not patterns and kind != "j2k_signed")  # else the same stream twice
]


@pytest.mark.parametrize(("kind", "allocated", "stored", "patterns"), CASES)
def test_generated_signed_files_match_pydicom_with_every_decoder(
    kind: str, allocated: int, stored: int, patterns: bool, monkeypatch: Any
) -> None:
    if kind.startswith("j2k") and not codecs.available("openjpeg"):
        pytest.skip("pylibjpeg-openjpeg encodes the JPEG 2000 files")
    if kind in ("jpeg_lossless_sv1", "jpeg_ls") and not codecs.available("imagecodecs"):
        pytest.skip("imagecodecs encodes the JPEG lossless and JPEG-LS files")
    data = signed_dicom(kind, allocated, stored, patterns=patterns)
    ref = reference(data)
    if kind not in ("jpeg_ls",) or not patterns or stored == allocated:
        # pydicom sign-extends these back to the values (JPEG-LS patterns in a 16-bit codestream: below)
        assert np.array_equal(ref, _signed_values(ref.shape, stored)), "the file does not hold what it should"
    names = every_decoder(data, monkeypatch)
    assert names, f"no fast decoder took {kind}"
    # the whole display path: the same display image as with pydicom's stored values (table and per-pixel VOI)
    fast = decode_image(data, "s.dcm")
    monkeypatch.setattr(voi, "_TABLE_MIN_PIXELS_PER_ENTRY", 10**12)
    item = parsed(data)
    monkeypatch.setitem(codecs.CODECS, item.syntax, [])
    slow = decode_image(data, "s.dcm")
    assert fast.pixels.dtype == slow.pixels.dtype and np.array_equal(fast.pixels, slow.pixels)
    assert fast.meta["signed"] is True


def test_jpeg_ls_patterns_in_a_wider_codestream_are_taken_as_pydicom_takes_them(monkeypatch: Any) -> None:
    """JPEG-LS has no sign: pydicom sign-extends from the codestream's precision (here 16, CharLS's for uint16),
    so 12-bit patterns in a 16-bit codestream stay the patterns. The fast path gives the same, not a 'fix'."""
    if not codecs.available("imagecodecs"):
        pytest.skip("imagecodecs encodes JPEG-LS")
    data = signed_dicom("jpeg_ls", 16, 12, patterns=True)
    ref = reference(data)
    assert ref.min() >= 0 and ref.max() > 2047  # pydicom: the patterns
    every_decoder(data, monkeypatch)


def test_signed_windowed_display_matches_pydicom(monkeypatch: Any) -> None:
    """A signed 12-bit J2K file with rescale and window: the display image of the fast path is pydicom's."""
    if not codecs.available("openjpeg"):
        pytest.skip("pylibjpeg-openjpeg encodes the JPEG 2000 files")
    data = signed_dicom("j2k_signed", 16, 12, patterns=False, shape=(300, 256), RescaleSlope=1, RescaleIntercept=-100,
                        WindowCenter=-200, WindowWidth=1500)  # fmt: skip
    item = parsed(data)
    assert dicom.decode_stored(item, "k").decoder != "pydicom"
    fast = decode_image(data, "s.dcm")
    monkeypatch.setitem(codecs.CODECS, item.syntax, [])
    slow = decode_image(data, "s.dcm")
    assert fast.pixels.dtype == np.uint8 and np.array_equal(fast.pixels, slow.pixels)
    assert fast.meta["voi"] == "window" and fast.meta["signed"] is True


@pytest.mark.skipif(not codecs.available("PIL"), reason="Pillow decodes JPEG 2000 resolution levels")
def test_signed_j2k_reduced_decode() -> None:
    if not codecs.available("openjpeg"):
        pytest.skip("pylibjpeg-openjpeg encodes the JPEG 2000 files")
    data = signed_dicom("j2k_signed", 16, 12, patterns=False, shape=(600, 500), noise=0.0)
    item = parsed(data)
    full = dicom.decode_stored(item, "k")
    half = dicom.decode_stored(item, "k", model_side=300)
    assert half.decoder == "pillow-openjpeg" and half.scale == 2 and half.array.shape == (300, 250)
    assert half.array.dtype == full.array.dtype == np.int16
    # the 5-3 wavelet's low band is a smoothed image on the even samples: the same signed image at half size
    assert np.abs(full.array[::2, ::2].astype(np.float64) - half.array).mean() < 0.002 * 4096
    assert half.array.min() < -2000 and half.array.max() > 2000  # negative values stay negative


def test_signed_values_in_an_unsigned_j2k_codestream_are_decoded_at_full_size() -> None:
    """Patterns wrap at zero (-1 is 4095): their wavelet low band is no image, so no reduced decode."""
    if not codecs.available("openjpeg"):
        pytest.skip("pylibjpeg-openjpeg encodes the JPEG 2000 files")
    data = signed_dicom("j2k_unsigned", 16, 12, patterns=True, shape=(600, 500))
    item = parsed(data)
    stored = dicom.decode_stored(item, "k", model_side=300)
    assert stored.scale == 1 and np.array_equal(stored.array, reference(data))


def test_signed_lossy_jpeg_is_left_to_pydicom() -> None:
    from PIL import Image

    data = signed_dicom("rle", 8, 8, patterns=True)
    ds = pydicom.dcmread(io.BytesIO(data))
    out = io.BytesIO()
    Image.fromarray(reference(data).view(np.uint8)).save(out, format="JPEG", quality=95)
    ds.PixelData = encapsulate([out.getvalue()])
    ds.file_meta.TransferSyntaxUID = UID(codecs.JPEG_BASELINE)
    buffer = io.BytesIO()
    ds.save_as(buffer)
    item = parsed(buffer.getvalue())
    assert dicom.fast_frame(item) is not None
    assert dicom.decode_stored(item, "k").decoder == "pydicom"


def test_stored_values_rules() -> None:
    """pydicom's corrections, one by one, on a hand-made array."""
    info = codecs.FrameInfo(1, 4, 16, 12, signed=True)
    patterns = np.array([[0x0FFF, 0x0800, 0x07FF, 0x0001]], np.uint16)  # -1, -2048, 2047, 1 in 12 bits
    values = [[-1, -2048, 2047, 1]]
    for syntax in (codecs.JPEG_LOSSLESS_SV1, codecs.RLE_LOSSLESS):  # from BitsStored
        out = codecs.stored_values(patterns.copy(), syntax, info, 12, False)
        assert out.dtype == np.int16 and out.tolist() == values
    assert codecs.stored_values(patterns.copy(), codecs.JPEG_LS_LOSSLESS, info, 12, False).tolist() == values
    assert codecs.stored_values(patterns.copy(), codecs.JPEG_LS_LOSSLESS, info, 16, False).tolist() == [
        [4095, 2048, 2047, 1]  # JPEG-LS: from the codestream's precision
    ]
    assert codecs.stored_values(patterns.copy(), codecs.J2K_LOSSLESS, info, 12, False).tolist() == values
    signed = np.array(values, np.int16)
    assert codecs.stored_values(signed.copy(), codecs.J2K_LOSSLESS, info, 12, True).tolist() == values  # as is
    unsigned = codecs.FrameInfo(1, 4, 16, 12)
    masked = codecs.stored_values(signed.copy(), codecs.J2K_LOSSLESS, unsigned, 12, True)  # signed stream, PR 0
    assert masked.dtype == np.uint16 and masked.tolist() == patterns.tolist()
    garbage = np.array([[0xF123, 0x0123]], np.uint16)  # overlay bits above BitsStored (RLE keeps them)
    rle = codecs.stored_values(garbage, codecs.RLE_LOSSLESS, codecs.FrameInfo(1, 2, 16, 12), 12, False)
    assert rle.tolist() == [[0x0123, 0x0123]]
    readonly = np.frombuffer(patterns.tobytes(), np.uint16).reshape(1, 4)
    assert codecs.stored_values(readonly, codecs.RLE_LOSSLESS, info, 12, False).tolist() == values


def test_a_signed_j2k_codestream_in_an_unsigned_dataset_matches_pydicom(monkeypatch: Any) -> None:
    """The other mismatch: pydicom keeps the codestream's ``precision``-bit patterns; so does the fast path."""
    if not codecs.available("openjpeg"):
        pytest.skip("pylibjpeg-openjpeg encodes the JPEG 2000 files")
    data = signed_dicom("j2k_signed", 16, 12, patterns=False)
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.PixelRepresentation = 0
    buffer = io.BytesIO()
    ds.save_as(buffer)
    data = buffer.getvalue()
    ref = reference(data)
    assert ref.dtype == np.uint16 and ref.max() > 2047  # negative values as 12-bit patterns
    item = parsed(data)
    names = []
    for codec in codecs.codecs_for(item.syntax):
        monkeypatch.setitem(codecs.CODECS, item.syntax, [codec])
        stored = dicom.decode_stored(item, "k")
        if stored.decoder != "pydicom":
            names.append(codec.name)
            assert stored.array.dtype == ref.dtype and np.array_equal(stored.array, ref), codec.name
    assert names
