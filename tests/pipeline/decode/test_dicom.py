"""DICOM decoding on pydicom's real test files and on files written here whose display image is computed
independently (DICOM PS3.3 C.11.2.1.2 window formulas written out in the test)."""

from __future__ import annotations

import io
import json
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from pixelperfect.pipeline.decode import codecs
from pixelperfect.pipeline.decode.dicom import hash_identifier
from pixelperfect.pipeline.decode.reader import CorruptImageError, UnsupportedImageError, decode_image
from pixelperfect.synthetic.phantoms import display_uint8, write_phantoms

MR_SMALL = [
    "MR_small.dcm",
    "MR_small_RLE.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_jp2klossless.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "MR_small_implicit.dcm",
    "MR_small_expb.dcm",
]


def pydicom_file(name: str) -> bytes:
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"pydicom test file {name} is not installed")
    return Path(path).read_bytes()


def window_linear(x: np.ndarray, c: float, w: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1, output range 0..255, rounded half up."""
    x = x.astype(np.float64)
    y = ((x - (c - 0.5)) / (w - 1) + 0.5) * 255
    y = np.where(x <= c - 0.5 - (w - 1) / 2, 0.0, np.where(x > c - 0.5 + (w - 1) / 2, 255.0, y))
    return np.floor(y + 0.5).astype(np.uint8)


def write_dicom(stored: np.ndarray, *, bits: int = 12, signed: bool = False, syntax: str = ExplicitVRLittleEndian,
                meta_header: bool = True, **attrs: Any) -> bytes:  # fmt: skip
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID(syntax)
    ds.file_meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.1")
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID, ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.ViewPosition, ds.PixelSpacing = "CR", "AP", [0.2, 0.25]
    ds.PatientName, ds.PatientID = "Doe^Jane", "MRN-12345"
    ds.Rows, ds.Columns = stored.shape[-2:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits, bits - 1, int(signed)
    for key, value in attrs.items():
        setattr(ds, key, value)
    if "PixelData" not in attrs:
        ds.PixelData = stored.astype("<i2" if signed else "<u2").tobytes()
    buffer = io.BytesIO()
    if meta_header:
        ds.save_as(buffer, enforce_file_format=True)
    else:
        del ds.file_meta
        ds.save_as(buffer, implicit_vr=True, little_endian=True)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def mr_reference() -> np.ndarray:
    ds = pydicom.dcmread(io.BytesIO(pydicom_file("MR_small.dcm")))
    assert (float(ds.WindowCenter), float(ds.WindowWidth)) == (600.0, 1600.0)
    return window_linear(ds.pixel_array, 600.0, 1600.0)


@pytest.mark.parametrize("name", MR_SMALL)
def test_mr_small_in_every_transfer_syntax_gives_the_windowed_image(name: str, mr_reference: np.ndarray) -> None:
    image = decode_image(pydicom_file(name), f"mr/{name}")
    assert image.pixels.dtype == np.uint8 and image.shape == (64, 64)
    assert np.array_equal(image.pixels, mr_reference)
    assert image.meta["voi"] == "window" and image.meta["window"] == [600.0, 1600.0]
    assert image.meta["modality"] == "MR" and image.meta["signed"] is True and image.meta["bits"] == 16


def test_ct_small_rescale_without_window() -> None:
    image = decode_image(pydicom_file("CT_small.dcm"), "ct.dcm")
    stored = pydicom.dcmread(io.BytesIO(pydicom_file("CT_small.dcm"))).pixel_array
    assert image.pixels.dtype == np.float32 and image.meta["voi"] is None
    assert np.array_equal(image.pixels, stored.astype(np.float32) - 1024)
    assert image.meta["rescale"] == [1.0, -1024.0] and image.meta["pixel_spacing"] is not None


def test_jpeg2000_and_jpeg_extended_decode() -> None:
    j2k = decode_image(pydicom_file("JPEG2000.dcm"), "j2k.dcm")
    assert j2k.shape == (1024, 256) and j2k.meta["transfer_syntax"] == "1.2.840.10008.1.2.4.91"
    ext = decode_image(pydicom_file("JPGExtended.dcm"), "ext.dcm")
    assert ext.shape == (1024, 256) and ext.meta["bits"] == 12


def test_jpeg_lossy_is_decoded_or_a_typed_codec_error() -> None:
    # pydicom documents JPEG-lossy.dcm as non-conformant: pylibjpeg-libjpeg rejects it; libjpeg-turbo (imagecodecs)
    # and GDCM read it, and it is then the same image as JPGExtended.dcm
    if codecs.available("imagecodecs") or codecs.available("gdcm"):
        lossy = decode_image(pydicom_file("JPEG-lossy.dcm"), "lossy.dcm")
        extended = decode_image(pydicom_file("JPGExtended.dcm"), "ext.dcm")
        assert lossy.shape == (1024, 256) and np.array_equal(lossy.pixels, extended.pixels)
    else:  # pragma: no cover - imagecodecs is a dependency
        with pytest.raises(UnsupportedImageError) as info:
            decode_image(pydicom_file("JPEG-lossy.dcm"), "lossy.dcm")
        assert info.value.reason == "codec_error" and "JPEG Extended" in info.value.detail


@pytest.mark.parametrize(
    ("name", "error", "reason", "options"),
    [
        ("MR_truncated.dcm", CorruptImageError, "truncated", {}),
        ("rtplan.dcm", UnsupportedImageError, "no_pixel_data", {}),
        ("SC_rgb_small_odd.dcm", UnsupportedImageError, "colour", {}),
        ("rtdose.dcm", UnsupportedImageError, "multi_frame", {}),
        ("rtdose.dcm", UnsupportedImageError, "frame_index", {"frame": 15}),
        ("no_meta.dcm", CorruptImageError, "not_dicom", {}),  # shipped with a stray leading byte
    ],
)
def test_real_files_fail_with_typed_errors(name: str, error: type, reason: str, options: dict) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(error) as info:
            decode_image(pydicom_file(name), f"dir/{name}", min_side=1, **options)
    assert info.value.reason == reason and info.value.key == f"dir/{name}"


def test_first_frame_and_colour_to_grey_options() -> None:
    dose = decode_image(pydicom_file("rtdose.dcm"), "dose.dcm", frame=0, min_side=1)
    assert np.array_equal(dose.pixels, pydicom.dcmread(io.BytesIO(pydicom_file("rtdose.dcm"))).pixel_array[0])
    assert dose.meta["frames"] == 15 and dose.meta["frame"] == 0
    rgb = pydicom.dcmread(io.BytesIO(pydicom_file("SC_rgb_small_odd.dcm"))).pixel_array.astype(np.float64)
    grey = decode_image(pydicom_file("SC_rgb_small_odd.dcm"), "rgb.dcm", colour_to_grey=True, min_side=1)
    expected = 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
    assert np.allclose(grey.pixels, expected, atol=1e-3)


def test_monochrome1_12_bit_window_is_inverted() -> None:
    stored = np.array([[0, 1000, 2048], [3000, 4095, 2500]], np.uint16).repeat(4, 0).repeat(4, 1)
    data = write_dicom(stored, PhotometricInterpretation="MONOCHROME1", WindowCenter=2048, WindowWidth=2000)
    image = decode_image(data, "m1.dcm")
    assert np.array_equal(image.pixels, 255 - window_linear(stored, 2048, 2000))
    assert image.meta["photometric"] == "MONOCHROME1" and image.meta["bits"] == 12
    plain = decode_image(write_dicom(stored, PhotometricInterpretation="MONOCHROME1"), "m1-plain.dcm")
    assert np.array_equal(plain.pixels, 4095.0 + 0.0 - stored)  # max + min - value: bright = dense


def test_signed_12_bit_with_rescale_and_linear_exact_window() -> None:
    stored = np.array([[-2048, -500, 0], [100, 700, 2047]], np.int16).repeat(4, 0).repeat(4, 1)
    data = write_dicom(stored, signed=True, RescaleSlope=2, RescaleIntercept=-100, WindowCenter=0,
                       WindowWidth=2000, VOILUTFunction="LINEAR_EXACT")  # fmt: skip
    image = decode_image(data, "signed.dcm")
    values = stored.astype(np.float64) * 2 - 100
    expected = np.floor(np.clip((values / 2000 + 0.5) * 255, 0, 255) + 0.5).astype(np.uint8)
    assert np.array_equal(image.pixels, expected) and image.meta["signed"] is True
    assert image.pixels[0, 0] == 0 and image.pixels[-1, -1] == 255


def test_window_index_selects_and_falls_back() -> None:
    stored = (np.arange(64 * 64) % 4096).reshape(64, 64).astype(np.uint16)
    data = write_dicom(stored, WindowCenter=[1000, 3000], WindowWidth=[500, 1500])
    first, second = decode_image(data, "w.dcm"), decode_image(data, "w.dcm", window_index=1)
    assert np.array_equal(first.pixels, window_linear(stored, 1000, 500))
    assert np.array_equal(second.pixels, window_linear(stored, 3000, 1500)) and second.meta["window_index"] == 1
    assert np.array_equal(decode_image(data, "w.dcm", window_index=7).pixels, first.pixels)


def test_sigmoid_window() -> None:
    stored = np.linspace(0, 4095, 64 * 64).reshape(64, 64).astype(np.uint16)
    data = write_dicom(stored, WindowCenter=2048, WindowWidth=1024, VOILUTFunction="SIGMOID")
    expected = np.floor(255 / (1 + np.exp(-4 * (stored - 2048.0) / 1024)) + 0.5).astype(np.uint8)
    assert np.array_equal(decode_image(data, "s.dcm").pixels, expected)


def test_voi_lut_sequence_is_preferred_to_the_window() -> None:
    stored = np.linspace(0, 4095, 32 * 32).reshape(32, 32).astype(np.uint16)
    first, entries = 100, 3000
    lut = (np.sqrt(np.arange(entries) / (entries - 1)) * 65535).astype(np.uint16)  # a gamma-like VOI LUT
    item = Dataset()
    item.add_new(0x00283002, "US", [entries, first, 16])  # LUT Descriptor
    item.add_new(0x00283006, "US", lut.tolist())  # LUT Data
    data = write_dicom(stored, VOILUTSequence=[item], WindowCenter=100, WindowWidth=10)
    image = decode_image(data, "lut.dcm")
    expected = lut[np.clip(stored.astype(int) - first, 0, entries - 1)] * (255 / 65535)
    assert image.meta["voi"] == "lut"
    assert np.abs(image.pixels.astype(int) - np.floor(expected + 0.5)).max() == 0


def test_header_limits_checked_before_decoding() -> None:
    data = write_dicom(np.zeros((1, 1), np.uint16), Rows=10_000, Columns=10_000, PixelData=b"\x00\x00")
    start = time.perf_counter()
    with pytest.raises(UnsupportedImageError) as info:
        decode_image(data, "bomb.dcm")
    assert info.value.reason == "too_large" and time.perf_counter() - start < 1.0
    assert decode_image(write_dicom(np.zeros((64, 64), np.uint16)), "ok.dcm", max_pixels=4096).shape == (64, 64)
    with pytest.raises(UnsupportedImageError, match="too_large"):
        decode_image(write_dicom(np.zeros((64, 64), np.uint16)), "big.dcm", max_pixels=4095)
    with pytest.raises(CorruptImageError, match="zero_size"):
        decode_image(write_dicom(np.zeros((1, 1), np.uint16), Rows=0, PixelData=b""), "zero.dcm")


def test_missing_codec_is_named() -> None:
    data = write_dicom(np.zeros((16, 16), np.uint16), syntax="1.2.840.10008.1.2.4.100",  # MPEG2: pydicom has no decoder
                       PixelData=encapsulate([b"\xff\x0a" + b"\x00" * 30]))  # fmt: skip
    with pytest.raises(UnsupportedImageError) as info:
        decode_image(data, "jxl.dcm")
    assert info.value.reason == "missing_codec" and "1.2.840.10008.1.2.4.100" in info.value.detail


def test_dataset_without_meta_header_is_sniffed() -> None:
    stored = (np.arange(16 * 16) * 16).reshape(16, 16).astype(np.uint16)
    data = write_dicom(stored, meta_header=False, syntax=ImplicitVRLittleEndian)
    assert data[:2] == b"\x08\x00"
    image = decode_image(data, "objects/no-extension")
    assert image.meta["format"] == "dicom" and np.array_equal(image.pixels, stored.astype(np.float32))


def test_metadata_keeps_hashes_never_names() -> None:
    image = decode_image(write_dicom(np.zeros((16, 16), np.uint16)), "meta.dcm")
    text = json.dumps(image.meta)
    assert "Doe" not in text and "Jane" not in text and "MRN-12345" not in text
    assert image.meta["patient_id_hash"] == hash_identifier("MRN-12345")
    assert image.meta["view_position"] == "AP" and image.meta["pixel_spacing"] == [0.2, 0.25]
    assert {"modality", "photometric", "bits", "width", "height"} <= set(image.meta)


def test_not_dicom_bytes_with_a_dcm_key() -> None:
    with pytest.raises(CorruptImageError) as info:
        decode_image(b"definitely not a DICOM file " * 20, "fake.dcm")
    assert info.value.reason == "not_dicom"


def test_phantom_dicoms_round_trip_both_polarities(tmp_path: Path) -> None:
    phantoms = write_phantoms(tmp_path, 2, size=64, fmt="dicom")
    for phantom in phantoms:
        image = decode_image((tmp_path / "images" / f"{phantom.id}.dcm").read_bytes(), f"{phantom.id}.dcm")
        assert image.meta["bits"] == 12 and image.meta["view_position"] == "PA"
        difference = image.pixels.astype(int) - display_uint8(phantom.image).astype(int)
        assert np.abs(difference).max() <= 1  # the 12-bit full-range window vs the PNG's 255/4095 scaling
    assert {decode_image((tmp_path / "images" / f"{p.id}.dcm").read_bytes(), "x.dcm").meta["photometric"]
            for p in phantoms} == {"MONOCHROME1", "MONOCHROME2"}  # fmt: skip


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16"])
@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
@pytest.mark.parametrize(
    "attrs",
    [
        {},
        {"RescaleSlope": 1, "RescaleIntercept": 0},
        {"RescaleSlope": 2},  # pydicom rescales only with both: identity
        {"RescaleSlope": 2, "RescaleIntercept": -5},
        {"RescaleSlope": 1, "RescaleIntercept": 0, "WindowCenter": 100, "WindowWidth": 300},
    ],
)
def test_display_shortcut_equals_the_per_pixel_display(dtype: str, photometric: str, attrs: dict) -> None:
    """Without VOI or rescale the display values are the stored ones, made without a table: the same values,
    bit for bit, as pydicom's modality LUT and the polarity rule applied per pixel."""
    from pixelperfect.pipeline.decode import voi

    info = np.iinfo(dtype)
    arr = np.random.default_rng(1).integers(max(info.min, -3000), min(info.max, 3000), (300, 260)).astype(dtype)
    ds = Dataset()
    for name, value in attrs.items():
        setattr(ds, name, value)
    fast_meta: dict[str, Any] = {}
    slow_meta: dict[str, Any] = {}
    fast = voi.display(arr, ds, photometric, 0, fast_meta, "k")
    slow = voi._display_values(arr, arr, ds, photometric, 0, slow_meta, "k")
    assert fast.dtype == slow.dtype and np.array_equal(fast, slow)
    assert fast_meta == slow_meta
    assert voi._identity(ds, 0) == (attrs.get("RescaleIntercept", 0) == 0 and "WindowCenter" not in attrs)
