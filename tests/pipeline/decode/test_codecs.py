"""The fast per-syntax decoders against pydicom's (the reference): real pydicom test files and generated archive
files, every installed decoder of each chain, reduced-resolution decode, bad codestreams."""

from __future__ import annotations

import io
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from pixelperfect.pipeline.decode import codecs, dicom, voi
from pixelperfect.pipeline.decode.reader import CorruptImageError, ImageDecodeError, UnsupportedImageError, decode_image
from pixelperfect.synthetic.archive_phantoms import ARCHIVE_KINDS, archive_phantom, encoder_missing

LOSSY = (codecs.JPEG_BASELINE, codecs.JPEG_EXTENDED, codecs.J2K)
SMALL = (300, 256)  # rows x columns: non-square, small enough for a quick test


def parsed(data: bytes, frame: int | None = None) -> dicom.ParsedDicom:
    return dicom.parse_dicom(data, "k.dcm", max_pixels=10**8, frame=frame, colour_to_grey=True)


def reference(data: bytes, index: int | None = None) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(pydicom.pixels.pixel_array(pydicom.dcmread(io.BytesIO(data)), index=index))


def assert_same(array: np.ndarray, ref: np.ndarray, syntax: str) -> None:
    assert array.shape == ref.shape and array.dtype == ref.dtype
    diff = np.abs(array.astype(np.int64) - ref.astype(np.int64)).max()
    assert diff <= (1 if syntax in LOSSY else 0), f"{syntax}: max difference {diff}"


REAL_FILES = [
    "JPGExtended.dcm",
    "JPEGLSNearLossless_08.dcm",
    "JPEGLSNearLossless_16.dcm",
    "JPEG2000.dcm",
    "MR_small_RLE.dcm",
    "MR_small_jp2klossless.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "693_J2KI.dcm",
    "J2K_pixelrep_mismatch.dcm",
    "SC_rgb_jpeg_gdcm.dcm",
    "SC_rgb_rle_16bit_2frame.dcm",
    "examples_jpeg2k.dcm",
]


@pytest.mark.parametrize("name", REAL_FILES)
def test_real_files_match_pydicom(name: str) -> None:
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"pydicom test file {name} is not installed")
    data = Path(path).read_bytes()
    item = parsed(data, frame=0)
    stored = dicom.decode_stored(item, name)
    assert_same(stored.array, reference(data, item.index), item.syntax)
    if name.startswith(("JPGExtended", "JPEGLS")) and codecs.available("imagecodecs"):
        assert stored.decoder.startswith("imagecodecs")  # unsigned greyscale: a fast decoder took it


@pytest.mark.parametrize("kind", list(ARCHIVE_KINDS))
@pytest.mark.parametrize("index", [0, 1])  # MONOCHROME2, MONOCHROME1
def test_archive_files_every_decoder_matches_pydicom(kind: str, index: int, monkeypatch: Any) -> None:
    spec = ARCHIVE_KINDS[kind]
    if encoder_missing(spec):
        pytest.skip(f"{kind} needs {encoder_missing(spec)} to encode")
    data, phantom = archive_phantom(kind, index, shape=SMALL)
    item = parsed(data)
    ref = reference(data)
    if not spec.lossy:
        stored_ref = phantom.image if spec.bits == 12 else ref
        assert np.array_equal(ref, (4095 - stored_ref) if index % 2 and spec.bits == 12 else stored_ref)
    found = dicom.fast_frame(item)
    if kind == "explicit_le":
        assert found is None and dicom.decode_stored(item, kind).decoder == "pydicom"
        return
    assert found is not None
    stream, info = found
    chain = codecs.codecs_for(item.syntax)
    assert chain, f"no fast decoder installed for {kind}"
    tried = []
    for codec in chain:  # the whole chain, not only the fastest: each is someone's fallback
        if spec.bits not in codec.bits:
            continue
        tried.append(codec.name)
        monkeypatch.setitem(codecs.CODECS, item.syntax, [codec])
        stored = codecs.decode_frame(item.syntax, stream, info)
        assert stored is not None and stored.decoder == codec.name and stored.scale == 1
        assert_same(stored.array, ref, item.syntax)
    assert tried
    monkeypatch.undo()
    # the table look-up display equals the per-pixel one (forced by an unreachable table threshold)
    fast = decode_image(data, f"{kind}.dcm")
    monkeypatch.setattr(voi, "_TABLE_MIN_PIXELS_PER_ENTRY", 10**12)
    monkeypatch.setitem(codecs.CODECS, item.syntax, [])
    slow = decode_image(data, f"{kind}.dcm")
    if spec.lossy:
        assert np.abs(fast.pixels.astype(np.float64) - slow.pixels).max() <= 1.0 + 1e-9
    else:
        assert fast.pixels.dtype == slow.pixels.dtype and np.array_equal(fast.pixels, slow.pixels)
    assert fast.meta["photometric"] == ("MONOCHROME1" if index % 2 else "MONOCHROME2")


def test_reduction_levels() -> None:
    assert codecs.reduction(2800, None, 5) == 0
    assert codecs.reduction(2800, 1024, 5) == 1  # 1400 >= 1024 > 700
    assert codecs.reduction(2800, 256, 5) == 3  # 350
    assert codecs.reduction(2800, 256, 2) == 2  # fewer levels in the stream: the smallest it has
    assert codecs.reduction(1024, 1024, 5) == 0
    assert codecs.reduction(2049, 1024, 5) == 1  # ceil(2049 / 2) = 1025


def test_reduced_layers() -> None:
    assert codecs.reduced_layers(3, 0) == 3  # full resolution: every layer
    assert codecs.reduced_layers(3, 1) == 1  # ceil(3 / 4)
    assert codecs.reduced_layers(8, 1) == 2 and codecs.reduced_layers(9, 1) == 3
    assert codecs.reduced_layers(20, 2) == 2  # ceil(20 / 16)
    assert codecs.reduced_layers(1, 3) == 1  # never fewer than one
    assert codecs.reduced_layers(0, 1) == 0  # unknown: all


@pytest.mark.skipif(not codecs.available("PIL"), reason="Pillow decodes JPEG 2000 resolution levels and layers")
def test_lossy_j2k_reduced_decode_reads_fewer_layers_and_the_full_decode_all(monkeypatch: Any) -> None:
    data, _ = archive_phantom("j2k_lossy", 0, shape=(600, 500))
    stream, info = dicom.fast_frame(parsed(data))  # type: ignore[misc]
    header = codecs.j2k_header(stream)
    assert header is not None and header.layers == 3 and not header.reversible
    seen: list[tuple[int, int]] = []
    pillow = next(c for c in codecs.CODECS[codecs.J2K] if c.name == "pillow-openjpeg")

    def spy(stream: bytes, info: codecs.FrameInfo, r: int) -> np.ndarray:
        seen.append((r, info.layers))
        return pillow.decode(stream, info, r)

    monkeypatch.setitem(codecs.CODECS, codecs.J2K, [replace(pillow, decode=spy)])
    half = codecs.decode_frame(codecs.J2K, stream, info, model_side=250)  # one level down: ceil(3 / 4) = 1 layer
    full = codecs.decode_frame(codecs.J2K, stream, info)
    assert seen == [(1, 1), (0, 0)]
    assert half is not None and half.scale == 2 and half.array.shape == (300, 250)
    assert full is not None and full.scale == 1
    assert_same(full.array, reference(data), codecs.J2K)  # the full decode reads every layer
    import cv2

    every_layer = pillow.decode(stream, replace(info, layers=0), 1)
    assert not np.array_equal(every_layer, half.array)  # the layers really were dropped ...
    shrunk = cv2.resize(full.array.astype(np.float32), (250, 300), interpolation=cv2.INTER_AREA)
    assert np.abs(shrunk - half.array).mean() < 0.02 * 4095  # ... and the image is still the film at half size


@pytest.mark.skipif(not codecs.available("PIL"), reason="Pillow encodes layered reversible JPEG 2000")
def test_lossless_j2k_full_decode_is_bit_exact_with_several_layers() -> None:
    from PIL import Image
    from pydicom.encaps import encapsulate

    data, _ = archive_phantom("j2k_lossless", 1, shape=(300, 256))
    ds = pydicom.dcmread(io.BytesIO(data))
    stored = reference(data)
    # reversible 5-3 wavelet, two quality layers: 1:20, then the rest of the bits (rate 1: lossless); 16-bit precision
    out = io.BytesIO()
    Image.fromarray(stored).save(out, format="JPEG2000", quality_mode="rates", quality_layers=[20, 1], no_jp2=True)
    stream = out.getvalue()
    header = codecs.j2k_header(stream)
    assert header is not None and header.layers == 2 and header.reversible
    ds.PixelData = encapsulate([stream])
    buffer = io.BytesIO()
    ds.save_as(buffer)
    item = parsed(buffer.getvalue())
    assert np.array_equal(dicom.decode_stored(item, "k").array, stored)
    reduced = dicom.decode_stored(item, "k", model_side=128)  # 150 >= 128: one level, ceil(2 / 4) = 1 layer
    assert reduced.scale == 2 and reduced.array.shape == (150, 128)


@pytest.mark.skipif(not codecs.available("PIL"), reason="Pillow decodes JPEG 2000 resolution levels")
def test_j2k_reduced_decode_keeps_the_original_grid() -> None:
    data, _ = archive_phantom("j2k_lossless", 0, shape=(1150, 1400))
    full = decode_image(data, "a.dcm")
    half = decode_image(data, "a.dcm", model_side=512)  # 700 >= 512: one level
    quarter = decode_image(data, "a.dcm", model_side=300)  # 350 >= 300: two levels
    assert full.shape == full.full_shape == (1150, 1400) and not full.reduced
    assert half.shape == (575, 700) and half.scale == 2 and half.full_shape == (1150, 1400)
    assert quarter.shape == (288, 350) and quarter.scale == 4
    assert half.meta["width"] == 1400 and half.meta["height"] == 1150 and half.meta["decode_scale"] == 2
    assert half.meta["pixel_spacing"] == full.meta["pixel_spacing"]
    import cv2

    shrunk = cv2.resize(full.pixels, (700, 575), interpolation=cv2.INTER_AREA).astype(np.float64)
    assert np.abs(shrunk - half.pixels).mean() < 2.0  # the wavelet low band is a smoothed half-size image


def test_j2k_with_fewer_levels_decodes_at_the_smallest_it_has() -> None:
    if not codecs.available("imagecodecs"):
        pytest.skip("imagecodecs encodes JPEG 2000 with a chosen number of levels")
    import imagecodecs

    data, _ = archive_phantom("j2k_lossless", 0, shape=(512, 512))
    ds = pydicom.dcmread(io.BytesIO(data))
    stored = reference(data)
    from pydicom.encaps import encapsulate

    stream = imagecodecs.jpeg2k_encode(stored, level=0, codecformat="J2K", resolutions=2, bitspersample=12)
    assert codecs.j2k_header(stream).levels == 1  # type: ignore[union-attr]
    ds.PixelData = encapsulate([stream])
    buffer = io.BytesIO()
    ds.save_as(buffer)
    image = decode_image(buffer.getvalue(), "few.dcm", model_side=64)  # would need 3 levels: 1 is all there is
    assert image.shape == (256, 256) and image.full_shape == (512, 512)


def test_jpeg_baseline_dct_scaling() -> None:
    data, _ = archive_phantom("jpeg_baseline", 0, shape=(1024, 1024))
    full = decode_image(data, "rsna.dcm", model_side=1024)
    small = decode_image(data, "rsna.dcm", model_side=256)
    assert full.shape == (1024, 1024) and not full.reduced
    assert small.shape == (256, 256) and small.scale == 4 and small.full_shape == (1024, 1024)
    assert small.meta["transfer_syntax"] == codecs.JPEG_BASELINE


def _rewrite(data: bytes, change: Any) -> bytes:
    from pydicom.encaps import encapsulate, generate_frames

    ds = pydicom.dcmread(io.BytesIO(data))
    (frame,) = list(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([change(frame)])
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


@pytest.mark.parametrize("kind", ["jpeg_baseline", "jpeg_lossless_sv1", "j2k_lossless", "j2k_lossy", "jpeg_ls"])
def test_truncated_and_corrupt_codestreams_fail_with_reasons(kind: str) -> None:
    if encoder_missing(ARCHIVE_KINDS[kind]):
        pytest.skip(f"{kind} cannot be encoded here")
    data, _ = archive_phantom(kind, 0, shape=SMALL)
    cut = _rewrite(data, lambda frame: frame[: len(frame) * 2 // 3])
    with pytest.raises(CorruptImageError) as info:
        decode_image(cut, "cut.dcm", model_side=128)
    assert info.value.reason == "truncated"

    def scramble(frame: bytes) -> bytes:
        middle = len(frame) // 3
        noise = np.random.default_rng(0).integers(0, 256, 64, dtype=np.uint8).tobytes()
        return frame[:middle] + noise.replace(b"\xff", b"\x00") + frame[middle + 64 :]

    t0 = time.perf_counter()
    try:
        image = decode_image(_rewrite(data, scramble), "bad.dcm")
    except ImageDecodeError as exc:  # a typed failure, or pixels: entropy-coded noise may still decode
        assert exc.reason in ("codec_error", "dicom_pixels", "truncated")
    else:
        assert image.shape == SMALL
    assert time.perf_counter() - t0 < 30


def test_header_bomb_is_refused_before_decoding() -> None:
    data, _ = archive_phantom("j2k_lossless", 0, shape=SMALL)
    with pytest.raises(UnsupportedImageError) as info:
        decode_image(data, "big.dcm", max_pixels=1000)
    assert info.value.reason == "too_large"


def test_missing_codec_names_the_package(monkeypatch: Any) -> None:
    data, _ = archive_phantom("j2k_lossless", 0, shape=SMALL)

    class NoPlugin:
        is_available = False
        missing_dependencies = ()

    import pydicom.pixels.decoders.base as base

    monkeypatch.setattr(codecs, "available", lambda module: False)
    monkeypatch.setattr(base, "get_decoder", lambda syntax: NoPlugin())
    with pytest.raises(UnsupportedImageError) as info:
        decode_image(data, "j2k.dcm")
    assert info.value.reason == "missing_codec" and "pylibjpeg-openjpeg" in info.value.detail


def test_codestream_headers() -> None:
    data, _ = archive_phantom("j2k_lossless", 0, shape=SMALL)
    stream, info = dicom.fast_frame(parsed(data))  # type: ignore[misc]
    header = codecs.j2k_header(stream)
    assert header is not None and (header.rows, header.columns, header.precision, header.signed) == (
        300,
        256,
        12,
        False,
    )
    assert header.levels == 5 and codecs.j2k_complete(stream) and not codecs.j2k_complete(stream[:-10])
    assert header.layers == 1 and header.reversible  # lossless: one layer, the 5-3 wavelet
    jpeg, _ = archive_phantom("jpeg_baseline", 0, shape=SMALL)
    stream, info = dicom.fast_frame(parsed(jpeg))  # type: ignore[misc]
    assert codecs.jpeg_header(stream) == (300, 256, 8, 1) and info.bits_allocated == 8
    assert codecs.jpeg_header(b"not a jpeg") is None and codecs.j2k_header(b"\x00" * 64) is None
    assert codecs.jpeg_complete(stream) and codecs.jpeg_complete(stream + b"\x00")  # DICOM's even-length pad
    assert not codecs.jpeg_complete(stream[:-2]) and not codecs.jpeg_complete(stream[: len(stream) // 2])
    assert not codecs.jpeg_complete(b"\xff\xd8\xff\xd9")  # an end marker but no scan
    assert codecs.jpeg_complete(stream[:-2] + b"\xff\xd9\x00\x00\x00")  # EOI, then more padding: searched


def test_j2k_codestream_precision_other_than_bits_stored(monkeypatch: Any) -> None:
    import openjpeg
    from pydicom.encaps import encapsulate

    data, _ = archive_phantom("j2k_lossless", 0, shape=SMALL)
    ds = pydicom.dcmread(io.BytesIO(data))
    stored = reference(data)
    ds.PixelData = encapsulate([openjpeg.encode(stored, bits_stored=16)])  # 12-bit values, a 16-bit codestream
    buffer = io.BytesIO()
    ds.save_as(buffer)
    item = parsed(buffer.getvalue())
    for codec in codecs.codecs_for(item.syntax):  # Pillow scales J2K by the codestream's precision, not BitsStored
        monkeypatch.setitem(codecs.CODECS, item.syntax, [codec])
        result = dicom.decode_stored(item, "k")
        assert result.decoder == codec.name and np.array_equal(result.array, stored), codec.name


def test_a_codestream_larger_than_its_dataset_is_refused_before_decoding() -> None:
    from pydicom.encaps import encapsulate

    big, _ = archive_phantom("j2k_lossless", 0, shape=(1200, 1000))
    small, _ = archive_phantom("j2k_lossless", 0, shape=(100, 100))
    ds = pydicom.dcmread(io.BytesIO(small))
    ds.PixelData = encapsulate([dicom.fast_frame(parsed(big))[0]])  # type: ignore[index]  # 1.2 Mpx in a 10 kpx file
    buffer = io.BytesIO()
    ds.save_as(buffer)
    with pytest.raises(UnsupportedImageError) as info:
        decode_image(buffer.getvalue(), "bomb.dcm", max_pixels=100_000)
    assert info.value.reason == "too_large" and "1000x1200" in info.value.detail


def test_archive_phantoms_command(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from pixelperfect.cli import app

    result = CliRunner().invoke(app, ["archive-phantoms", str(tmp_path), "--n", "2", "--kind", "rle"])
    assert result.exit_code == 0, result.output
    files = sorted((tmp_path / "rle").glob("*.dcm"))
    assert len(files) == 2 and len(list((tmp_path / "rle" / "masks").glob("*.png"))) == 2
    first = decode_image(files[0].read_bytes(), files[0].name)
    assert first.shape == (2300, 2800) and first.meta["transfer_syntax"] == codecs.RLE_LOSSLESS
    bad = CliRunner().invoke(app, ["archive-phantoms", str(tmp_path), "--kind", "gif"])
    assert bad.exit_code != 0 and "unknown kind gif" in bad.output


def test_dct_scaling_of_an_odd_sized_jpeg_keeps_the_scale_it_reached() -> None:
    data, _ = archive_phantom("jpeg_baseline", 0, shape=(1001, 999))
    image = decode_image(data, "odd.dcm", model_side=120)  # 1/8 would give 126 >= 120; Pillow may stop at 1/4
    assert image.full_shape == (1001, 999) and image.scale in (4, 8)
    assert image.shape == (-(-1001 // image.scale), -(-999 // image.scale))


def test_transfer_syntaxes_are_pydicoms_names_read_when_first_used() -> None:
    """The syntaxes are pydicom.uid's, by name; importing the module (every worker does, also where no DICOM is
    read and pydicom is not installed) does not import pydicom."""
    import subprocess
    import sys

    import pydicom.uid

    check = (
        "import sys, pixelperfect.pipeline.decode.codecs as c; n = len(c.CODECS); print('pydicom' in sys.modules, n)"
    )
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.split() == ["True", "12"], out.stderr  # CODECS read: pydicom loaded
    lazy = "import sys, pixelperfect.pipeline.decode.codecs, pixelperfect.worker.batch; print('pydicom' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", lazy], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr
    for ours, theirs in codecs.UID_NAMES.items():
        assert getattr(codecs, ours) == getattr(pydicom.uid, theirs)
    assert codecs.J2K_SYNTAXES[2:] == tuple(getattr(pydicom.uid, n) for n in codecs.HTJ2K_NAMES)
