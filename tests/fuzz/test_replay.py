"""Every harness's seed corpus and every past finding through the harness contract, in plain pytest (no atheris):
a regression fails here on any machine. Each finding's input is generated in its test (docs/fuzzing.md lists them)."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from pixelperfect.inputs.annotations import AnnotationError, parse_annotations
from pixelperfect.pipeline.decode.dicom import ParsedDicom, finish_dicom
from pixelperfect.pipeline.decode.image import DECODE_REASONS, ImageDecodeError
from pixelperfect.pipeline.decode.reader import decode_image
from pixelperfect.storage.base import SourceUnavailableError
from pixelperfect.storage.dicomweb import instances_of_page
from tests.fuzz import harnesses, seeds
from tests.fuzz.bombs import _explicit, _meta


@pytest.mark.parametrize("name", list(harnesses.HARNESSES))
def test_seed_corpus_keeps_the_contract(name: str) -> None:
    items = seeds.seeds(name)
    assert len(items) >= 3
    for label, data in items:
        try:
            harnesses.run_one(name, data)
        except Exception as exc:  # pragma: no cover - the assertion names the seed
            raise AssertionError(f"seed {label} of {name}: {type(exc).__name__}: {exc}") from exc


def test_the_decode_seeds_decode_and_fail_as_documented() -> None:
    """The seeds are not all failures: the phantoms of every transfer syntax decode."""
    decoded, reasons = 0, set()
    for _, data in seeds.seeds("decode"):
        try:
            decode_image(data[1:], "seed" + harnesses.SUFFIXES[data[0] % len(harnesses.SUFFIXES)])
            decoded += 1
        except ImageDecodeError as exc:
            reasons.add(exc.reason)
    assert decoded >= 10
    assert reasons <= DECODE_REASONS and {"truncated", "too_large"} <= reasons


# ---------------------------------------------------------------------------------- findings (docs/fuzzing.md)


def _film(*extra: tuple[int, bytes, bytes], rows: int = 16, cols: int = 16, photometric: bytes = b"MONOCHROME2 ",
          bits: int = 16) -> bytes:  # fmt: skip
    us = lambda v: struct.pack("<H", v)  # noqa: E731
    elements = [
        (0x00280002, b"US", us(1)),
        (0x00280004, b"CS", photometric),
        (0x00280010, b"US", us(rows)),
        (0x00280011, b"US", us(cols)),
        (0x00280100, b"US", us(bits)),
        (0x00280101, b"US", us(bits)),
        (0x00280103, b"US", us(0)),
        *extra,
        (0x7FE00010, b"OW", bytes(rows * cols * bits // 8)),
    ]
    return _meta("1.2.840.10008.1.2.1") + b"".join(_explicit(*e) for e in sorted(elements))


def _reason(data: bytes, **options: object) -> str:
    with pytest.raises(ImageDecodeError) as caught:
        decode_image(data, "finding.dcm", **options)  # type: ignore[arg-type]
    return caught.value.reason


@pytest.mark.parametrize(
    "value", [b"12abc ", b"1\\2 ", b"inf ", b"-3"], ids=["text", "multi-valued", "infinity", "negative"]
)
def test_finding_1_number_of_frames_that_is_no_integer(value: bytes) -> None:
    """F1-F3: an IS NumberOfFrames of text, several values or infinity raised ValueError / TypeError /
    OverflowError out of the decode."""
    assert _reason(_film((0x00280008, b"IS", value))) == "bad_attribute"


def test_finding_4_palette_colour_without_its_lut() -> None:
    """F4: PALETTE COLOR with no Palette Color LUT module raised pydicom's ValueError."""
    film = _film(photometric=b"PALETTE COLOR ", bits=8)
    assert _reason(film, colour_to_grey=True) == "bad_lut"
    assert _reason(film) == "colour"


@pytest.mark.parametrize(
    "value,reason",
    [(b"OB)d ", "bad_attribute"), (b"1\\2 ", "bad_attribute"), (b"inf ", "nan_pixels")],
    ids=["text", "multi-valued", "infinity"],
)
def test_finding_5_rescale_that_is_no_number(value: bytes, reason: str) -> None:
    """F5: a RescaleSlope of text raised ValueError from the metadata (infinity stays ``nan_pixels``, as the
    modality LUT's check and tests/faults name it)."""
    film = _film((0x00281052, b"DS", b"0 "), (0x00281053, b"DS", value))
    assert _reason(film) == reason


def test_finding_6_rescale_beyond_float32() -> None:
    """F6: RescaleIntercept -1e308 without a VOI gave -inf float32 pixels (finite in float64)."""
    film = _film((0x00281052, b"DS", b"-1e308"), (0x00281053, b"DS", b"0.5 "))
    assert _reason(film) == "nan_pixels"


def test_finding_7_pixels_of_another_shape_than_declared() -> None:
    """F7: a stored array of another shape than Rows x Columns (pydicom read frames the dataset did not count)
    came out as a 3-D "image"."""
    from pydicom.dataset import Dataset

    parsed = ParsedDicom(Dataset(), 1, None, "MONOCHROME2", True, rows=8, columns=32, bits_allocated=16)
    with pytest.raises(ImageDecodeError) as caught:
        finish_dicom(parsed, np.zeros((8, 32, 13), np.uint16), "finding.dcm")
    assert caught.value.reason == "dicom_pixels"


def test_finding_11_an_element_of_an_unknown_vr() -> None:
    """F11: PixelRepresentation written with the VR bytes ``U\\x13``: pydicom's NotImplementedError ("Unknown Value
    Representation") when the value was first read."""
    film = _film().replace(struct.pack("<HH", 0x0028, 0x0103) + b"US", struct.pack("<HH", 0x0028, 0x0103) + b"U\x13")
    assert _reason(film) == "bad_attribute"


def _rle_segments_longer_than_the_frame() -> bytes:
    """A 64 x 64 RLE Lossless phantom whose Columns says 56: its segments decode past the 64 x 56 frame."""
    from pixelperfect.synthetic.archive_phantoms import archive_phantom

    data = bytearray(archive_phantom("rle", 0, shape=(64, 64))[0])
    columns = data.find(struct.pack("<HH", 0x0028, 0x0011) + b"US")
    data[columns + 8 : columns + 10] = struct.pack("<H", 56)
    return bytes(data)


def test_finding_8_rle_decoder_panic() -> None:
    """F8: pylibjpeg-rle (Rust) panics "index out of bounds" on a segment that decodes past its frame; the panic
    is a BaseException (pyo3's PanicException) and went through every ``except Exception``."""
    assert _reason(_rle_segments_longer_than_the_frame()) == "codec_error"


@pytest.mark.parametrize(
    "text",
    ["patientId,x,y,width,height,Target\na\rb,1,2,3,4,1\n", "patientId,x\ry\n", "key,x1\n" + "x" * 200_000 + "\n"],
    ids=["cr-in-row", "cr-in-header", "field-over-csv-limit"],
)
def test_finding_9_csv_errors_are_annotation_errors(text: str) -> None:
    """F9: the csv module's own errors (a carriage return inside an unquoted field) escaped as ``_csv.Error``."""
    with pytest.raises(AnnotationError, match=r"not CSV|header lacks"):
        parse_annotations(text, "rsna" if text.startswith("patientId") else "csv", "labels.csv")


@pytest.mark.parametrize(
    "page",
    [{"0020000D": {}}, [1, 2], [{"0020000D": []}], [{"0020000D": {"Value": "1.2"}}], [{"0020000D": {"Value": [{}]}}]],
    ids=["object", "numbers", "attribute-list", "value-string", "value-object"],
)
def test_finding_10_malformed_qido_pages(page: object) -> None:
    """F10 (found reading the code for the harness): a QIDO-RS page that is not an array of DICOM JSON objects
    raised AttributeError / KeyError out of the listing; attributes of the wrong shape were indexed as strings."""
    try:
        found = instances_of_page(page, "test")
    except SourceUnavailableError:
        return
    assert found == []


def test_the_dicomweb_harness_reads_a_malformed_wado_body_as_bad_response() -> None:
    harnesses.dicomweb(b"\xff" + harnesses.wado_body(b"\x00" * 200))
    harnesses.dicomweb(b"\xff" + b"--nothing--")


def test_the_contract_catches_what_it_should() -> None:
    """The harness contract itself: an undocumented reason, a 3-D image, NaN pixels are findings."""
    with pytest.raises(harnesses.Finding):
        harnesses.check_reason(ImageDecodeError("k", "oops", "undocumented"))

    class Image:
        def __init__(self, pixels: np.ndarray) -> None:
            self.pixels, self.full_shape = pixels, pixels.shape[:2]

    with pytest.raises(harnesses.Finding):
        harnesses.check_image(Image(np.zeros((4, 4, 3), np.uint8)))
    with pytest.raises(harnesses.Finding):
        harnesses.check_image(Image(np.full((4, 4), np.nan, np.float32)))
    harnesses.check_image(Image(np.zeros((4, 4), np.uint16)))


def test_finding_12_cfind_answers_without_their_uids() -> None:
    """F12 (found writing the DIMSE harness): a C-FIND answer without StudyInstanceUID / SeriesInstanceUID /
    SOPInstanceUID raised AttributeError out of the listing (``a.StudyInstanceUID``); now it is skipped."""
    import io

    from pydicom.dataset import Dataset
    from pydicom.filereader import read_dataset

    from pixelperfect.storage.dimse import _answer_matches, answer_uid

    answer = Dataset()
    answer.SOPInstanceUID = "1.2.3"
    assert answer_uid(answer, "StudyInstanceUID") is None
    assert answer_uid(answer, "SOPInstanceUID") == "1.2.3"
    answer.StudyInstanceUID = ""
    assert answer_uid(answer, "StudyInstanceUID") is None
    raw = struct.pack("<HHI", 0x0008, 0x0060, 2) + b"DX"  # Modality, implicit VR
    assert _answer_matches(read_dataset(io.BytesIO(raw), True, True), {"Modality": "D*"})
    assert not _answer_matches(read_dataset(io.BytesIO(raw), True, True), {"Modality": "CR"})


def _lossless_jpeg_film(strip_huffman_tables: bool) -> bytes:
    """A 64 × 56 12-bit film in JPEG Lossless SV1 (libjpeg-turbo's own lossless encoder); ``strip_huffman_tables``:
    its DHT marker overwritten, so the scan refers to tables nobody defined."""
    import imagecodecs
    from pydicom.encaps import encapsulate

    pixels = ((np.arange(64 * 56, dtype=np.uint16).reshape(64, 56) * 7) % 4096).astype(np.uint16)
    stream = bytes(imagecodecs.jpeg8_encode(pixels, lossless=True, bitspersample=12))
    if strip_huffman_tables:
        at = stream.index(b"\xff\xc4")
        stream = stream[:at] + b"\xff\x01" + stream[at + 2 :]
    import io

    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import JPEGLosslessSV1, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 64, 56, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = encapsulate([stream])
    ds["PixelData"].VR = "OB"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def test_finding_13_lossless_jpeg_without_huffman_tables_fails_without_killing_the_process() -> None:
    """F13: imagecodecs' liblj92 (``ljpeg_decode``), the fast path's fallback when libjpeg-turbo refused a JPEG
    Lossless stream, crashed the process (SIGSEGV) on a stream whose Huffman tables were never defined. Run in a
    child process, so that a crash fails this test instead of ending the session."""
    import subprocess
    import sys

    code = (
        "import sys; from tests.fuzz.test_replay import _lossless_jpeg_film, _reason; "
        "from pixelperfect.pipeline.decode.reader import decode_image; "
        "assert decode_image(_lossless_jpeg_film(False), 'good.dcm').pixels.shape == (64, 56); "
        "print(_reason(_lossless_jpeg_film(True)))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"the decode died with {proc.returncode}: {proc.stderr[-2000:]}"
    assert proc.stdout.strip().splitlines()[-1] in DECODE_REASONS


def test_finding_14_a_transfer_syntax_that_is_no_uid() -> None:
    """F14: a meta group whose (0002,0010) comes a second time as SH ("PYDICOM 3.0.2") reached the pixel decoder as
    a str and raised AttributeError (``.name``) instead of the missing-codec reason."""
    film = _film()
    meta_end = film.index(b"\x02\x00\x10\x00UI")
    value = b"PYDICOM 3.0.2 "
    twice = struct.pack("<HH", 2, 0x10) + b"SH" + struct.pack("<H", len(value)) + value
    group_length = struct.unpack("<I", film[140:144])[0]
    head = film[:140] + struct.pack("<I", group_length + len(twice)) + film[144:]
    end = meta_end + 8 + struct.unpack("<H", film[meta_end + 6 : meta_end + 8])[0]
    assert _reason(head[:end] + twice + head[end:]) in DECODE_REASONS


def test_finding_15_a_binary_attribute_whose_length_is_no_multiple_of_its_size() -> None:
    """F15: PixelRepresentation written with VR UL in 2 bytes: pydicom's ``BytesLengthException`` (no ValueError)
    escaped ``check_dataset`` on first access."""
    film = _film()
    element = struct.pack("<HH", 0x0028, 0x0103) + b"US"
    assert film.count(element) == 1
    assert _reason(film.replace(element, struct.pack("<HH", 0x0028, 0x0103) + b"UL")) == "bad_attribute"


def test_finding_16_a_cfind_answer_whose_uid_has_a_binary_vr() -> None:
    """F16: an explicit-VR C-FIND answer holding SOPInstanceUID (or a filtered attribute) as US of 3 bytes: pydicom's
    ``BytesLengthException`` escaped the DIMSE listing; the answer is now skipped, and matches no filter."""
    import io

    from pydicom.filereader import read_dataset

    from pixelperfect.storage.dimse import _answer_matches, answer_uid

    for tag, keyword in ((0x00080018, "SOPInstanceUID"), (0x00080060, "Modality")):
        raw = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + b"US" + struct.pack("<H", 3) + b"1.2"
        answer = read_dataset(io.BytesIO(raw), False, True)
        assert answer_uid(answer, keyword) is None
        assert not _answer_matches(read_dataset(io.BytesIO(raw), False, True), {keyword: "*"})
