"""A compressed DICOM file read by pydicom's element parser for the decode's attributes only
(``dicom.read_header``): the same pixels and metadata as the whole-dataset path on pydicom's JPEG test files,
RSNA-style and archive films and files written here with the attributes the decode reads; every file it does not
take goes to the whole dataset, with the same result or the same error."""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence

from pixelperfect.pipeline.decode import codecs, dicom
from pixelperfect.pipeline.decode.reader import ImageDecodeError, decode_image
from pixelperfect.synthetic.archive_phantoms import archive_phantom, rsna_dicom


def film(seed: int = 0, shape: tuple[int, int] = (256, 200)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0 : shape[0], 0 : shape[1]]
    smooth = 128 + 90 * np.sin(x / 17.0) * np.cos(y / 23.0) + rng.normal(0, 6, shape)
    return np.clip(smooth, 0, 255).astype(np.uint8)


def rewrite(data: bytes, change: Callable[[Dataset], None]) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(data))
    change(ds)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _set(**attrs: Any) -> Callable[[Dataset], None]:
    def change(ds: Dataset) -> None:
        for name, value in attrs.items():
            if value is None:
                delattr(ds, name)
            else:
                setattr(ds, name, value)

    return change


def _sequence_of_undefined_length(ds: Dataset) -> None:
    inner = Dataset()
    inner.CodeValue, inner.CodingSchemeDesignator = "T-D3000", "SRT"
    item = Dataset()
    item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    item.PurposeOfReferenceCodeSequence = Sequence([inner])  # nested
    ds.SourceImageSequence = Sequence([item, Dataset()])
    ds["SourceImageSequence"].is_undefined_length = True
    ds.SourceImageSequence[0].is_undefined_length_sequence_item = True
    ds.SourceImageSequence[0]["PurposeOfReferenceCodeSequence"].is_undefined_length = True


def _two_fragments(ds: Dataset) -> None:
    from pydicom.encaps import generate_frames

    (frame,) = generate_frames(ds.PixelData, number_of_frames=1)
    ds.PixelData = encapsulate([frame], fragments_per_frame=2, has_bot=True)  # offset table: [0]


def _offsets_of_two_frames(ds: Dataset) -> None:
    from pydicom.encaps import generate_frames

    (frame,) = generate_frames(ds.PixelData, number_of_frames=1)
    half = len(frame) // 2 + (len(frame) // 2) % 2
    ds.PixelData = encapsulate([frame[:half], frame[half:]], has_bot=True)  # NumberOfFrames says 1


def _private_and_long_text(ds: Dataset) -> None:
    ds.add_new(0x00091010, "LO", "vendor")
    ds.add_new(0x00091011, "OB", b"\x00\x01\x02\x03")
    ds.ImageComments = "a long text " * 20
    ds.SpecificCharacterSet = "ISO_IR 100"


def _modality_lut(ds: Dataset) -> None:
    item = Dataset()
    item.LUTDescriptor = [256, 0, 8]
    item.ModalityLUTType = "US"
    item.add_new(0x00283006, "US", list(range(255, -1, -1)))  # LUTData, inverted
    ds.ModalityLUTSequence = Sequence([item])
    ds["ModalityLUTSequence"].VR = "SQ"


def _truncate(ds: Dataset) -> None:
    from pydicom.encaps import generate_frames

    (frame,) = generate_frames(ds.PixelData, number_of_frames=1)
    ds.PixelData = encapsulate([frame[: len(frame) // 2]])


def _decompress(ds: Dataset) -> None:
    ds.decompress()


RSNA = rsna_dicom(film(), "patient-1")
# name -> (bytes, read by read_header?)
CASES: dict[str, tuple[Callable[[], bytes], bool]] = {
    "rsna": (lambda: RSNA, True),
    "archive_m2": (lambda: archive_phantom("jpeg_baseline", 0, shape=(300, 256))[0], True),
    "archive_m1": (lambda: archive_phantom("jpeg_baseline", 1, shape=(300, 256))[0], True),
    "window": (lambda: rewrite(RSNA, _set(WindowCenter=120, WindowWidth=180)), True),
    "windows_and_sigmoid": (
        lambda: rewrite(RSNA, _set(WindowCenter=[120, 90], WindowWidth=[180, 60], VOILUTFunction="SIGMOID")),
        True,
    ),
    "rescale": (lambda: rewrite(RSNA, _set(RescaleSlope="0.5", RescaleIntercept="-12.25")), True),
    "identity_rescale_m1": (
        lambda: rewrite(RSNA, _set(RescaleSlope=1, RescaleIntercept=0, PhotometricInterpretation="MONOCHROME1")),
        True,
    ),
    "imager_spacing": (
        lambda: rewrite(
            RSNA,
            _set(PixelSpacing=None, ImagerPixelSpacing=[0.15, 0.15], EstimatedRadiographicMagnificationFactor=1.2),
        ),
        True,
    ),
    "anisotropic_spacing": (lambda: rewrite(RSNA, _set(PixelSpacing=[0.1, 2.0])), True),
    "empty_text": (lambda: rewrite(RSNA, _set(AccessionNumber="", Modality="DX", ViewPosition="")), True),
    "identifiers": (lambda: rewrite(RSNA, _set(AccessionNumber="A-77", StudyInstanceUID="1.2.3.4")), True),
    "sequence_undefined_length": (lambda: rewrite(RSNA, _sequence_of_undefined_length), True),
    "two_fragments": (lambda: rewrite(RSNA, _two_fragments), True),
    "private_and_long_text": (lambda: rewrite(RSNA, _private_and_long_text), True),
    "number_of_frames_1": (lambda: rewrite(RSNA, _set(NumberOfFrames=1)), True),
    # read here, then refused by the decode's own checks or decoders: pydicom's path decides
    "signed": (lambda: rewrite(RSNA, _set(PixelRepresentation=1)), True),
    "colour_photometric": (lambda: rewrite(RSNA, _set(PhotometricInterpretation="RGB")), True),
    "two_frames": (lambda: rewrite(RSNA, _set(NumberOfFrames=2)), True),
    "truncated": (lambda: rewrite(RSNA, _truncate), True),
    "bad_spacing": (lambda: RSNA.replace(b"0.168\\0.168", b"abc\\0.16800"), True),  # pydicom writes no "abc"
    "empty_rescale": (lambda: rewrite(RSNA, _set(RescaleSlope="", RescaleIntercept="")), True),
    "non_ascii_patient": (lambda: rewrite(RSNA, _set(SpecificCharacterSet="ISO_IR 100", PatientID="Müller")), True),
    "two_modalities": (lambda: rewrite(RSNA, _set(Modality="CR\\DX")), True),
    "lossless_syntax": (lambda: archive_phantom("jpeg_lossless_sv1", 0, shape=(64, 48))[0], True),
    "offsets_of_two_frames": (lambda: rewrite(RSNA, _offsets_of_two_frames), True),
    "trailing_element": (lambda: RSNA + b"\xfc\xff\xfc\xffOB\x00\x00\x02\x00\x00\x00\x00\x00", True),
    # not read here: the whole dataset
    "modality_lut": (lambda: rewrite(RSNA, _modality_lut), False),
    "no_preamble": (lambda: RSNA[132:], False),
    "uncompressed": (lambda: rewrite(RSNA, _decompress), False),
}


def both(data: bytes, monkeypatch: Any, **options: Any) -> tuple[Any, Any]:
    """The decode with this path, then with the whole dataset only: each an image or the error it raised."""

    def run() -> Any:
        try:
            return decode_image(data, "f.dcm", **options)
        except ImageDecodeError as exc:
            return exc

    fast = run()
    with monkeypatch.context() as patched:
        patched.setattr(dicom, "read_header", lambda data: None)
        slow = run()
    return fast, slow


def assert_same(fast: Any, slow: Any) -> None:
    if isinstance(slow, ImageDecodeError):
        assert type(fast) is type(slow) and (fast.reason, fast.detail) == (slow.reason, slow.detail)
        return
    assert not isinstance(fast, ImageDecodeError), fast
    assert fast.pixels.dtype == slow.pixels.dtype and np.array_equal(fast.pixels, slow.pixels)
    assert fast.meta == slow.meta
    assert (fast.original_shape, fast.scale) == (slow.original_shape, slow.scale)


@pytest.mark.parametrize("name", list(CASES))
def test_same_pixels_and_metadata_as_the_pydicom_path(name: str, monkeypatch: Any) -> None:
    make, header = CASES[name]
    data = make()
    assert (dicom.read_header(data) is not None) == header
    for options in ({}, {"model_side": 64}, {"frame": 0}, {"window_index": 1}):
        assert_same(*both(data, monkeypatch, **options))
    assert_same(*both(data, monkeypatch, max_pixels=1000))  # too large: the same refusal


@pytest.mark.parametrize("name", ["rsna", "archive_m1", "window", "sequence_undefined_length"])
def test_a_compressed_file_is_decoded_without_reading_its_whole_dataset(name: str, monkeypatch: Any) -> None:
    data = CASES[name][0]()
    with monkeypatch.context() as patched:
        patched.setattr(pydicom, "dcmread", lambda *a, **k: pytest.fail("the whole dataset was read"))
        image = decode_image(data, "f.dcm")
    assert image.meta["transfer_syntax"] == codecs.JPEG_BASELINE


#: pydicom's test files in a JPEG baseline or extended syntax (all of them in pydicom 3.0)
PYDICOM_JPEG_FILES = [
    "JPEG-lossy.dcm",
    "JPGExtended.dcm",
    "SC_jpeg_no_color_transform.dcm",
    "SC_jpeg_no_color_transform_2.dcm",
    "SC_rgb_dcmtk_+eb+cr.dcm",
    "SC_rgb_dcmtk_+eb+cy+n1.dcm",
    "SC_rgb_dcmtk_+eb+cy+n2.dcm",
    "SC_rgb_dcmtk_+eb+cy+np.dcm",
    "SC_rgb_dcmtk_+eb+cy+s2.dcm",
    "SC_rgb_dcmtk_+eb+cy+s4.dcm",
    "SC_rgb_jpeg.dcm",
    "SC_rgb_jpeg_app14_dcmd.dcm",
    "SC_rgb_jpeg_dcmtk.dcm",
    "SC_rgb_jpeg_lossy_gdcm.dcm",
    "SC_rgb_small_odd_jpeg.dcm",
    "examples_ybr_color.dcm",
]


@pytest.mark.parametrize("name", PYDICOM_JPEG_FILES)
def test_pydicom_jpeg_test_files(name: str, monkeypatch: Any) -> None:
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"pydicom test file {name} is not installed")
    data = Path(path).read_bytes()
    if name in ("JPEG-lossy.dcm", "JPGExtended.dcm"):  # greyscale, with a sequence of undefined length
        assert dicom.read_header(data) is not None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for options in ({}, {"frame": 0, "colour_to_grey": True}):
            assert_same(*both(data, monkeypatch, **options))


@pytest.mark.parametrize("name", [n for n, (_, header) in CASES.items() if header])
def test_values_are_the_whole_datasets(name: str) -> None:
    data = CASES[name][0]()
    header = dicom.read_header(data)
    assert header is not None
    ds = pydicom.dcmread(io.BytesIO(data))
    assert str(header.file_meta.TransferSyntaxUID) == str(ds.file_meta.TransferSyntaxUID)
    for keyword in dicom.HEADER_KEYWORDS:
        assert (keyword in header) == (keyword in ds), keyword
        if keyword in ds:
            assert header[keyword].value == ds[keyword].value, keyword
    assert {e.keyword for e in header} <= set(dicom.HEADER_KEYWORDS)  # nothing else was kept
