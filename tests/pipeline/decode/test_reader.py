"""Raster decoding (PNG/JPEG/TIFF, 8- and 16-bit, float) and the typed errors for bad input."""

from __future__ import annotations

import io
import struct
import time
import tracemalloc
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from pixelperfect.pipeline.decode.reader import (
    CorruptImageError,
    ImageDecodeError,
    UnsupportedImageError,
    decode_image,
)
from tests.faults import corpus


def encode(image: np.ndarray, ext: str) -> bytes:
    ok, buffer = cv2.imencode(ext, image)
    assert ok
    return buffer.tobytes()


def gradient(dtype: type = np.uint8, size: int = 32) -> np.ndarray:
    top = 255 if dtype == np.uint8 else 65535
    return np.linspace(0, top, size * size).reshape(size, size).astype(dtype)


def test_png_8_and_16_bit_exact() -> None:
    for dtype, bits in ((np.uint8, 8), (np.uint16, 16)):
        image = gradient(dtype)
        decoded = decode_image(encode(image, ".png"), f"a/{bits}.png")
        assert decoded.pixels.dtype == dtype and np.array_equal(decoded.pixels, image)
        assert decoded.meta == {"format": "png", "bits": bits, "mode": decoded.meta["mode"], "frames": 1,
                                "width": 32, "height": 32}  # fmt: skip


def test_tiff_16_bit_and_float() -> None:
    image = gradient(np.uint16)
    decoded = decode_image(encode(image, ".tiff"), "b.tif")
    assert decoded.meta["format"] == "tiff" and np.array_equal(decoded.pixels, image)
    values = np.linspace(-1.5, 2.5, 32 * 32, dtype=np.float32).reshape(32, 32)
    buffer = io.BytesIO()
    Image.fromarray(values, mode="F").save(buffer, format="TIFF")
    floats = decode_image(buffer.getvalue(), "c.tiff")
    assert floats.pixels.dtype == np.float32 and np.allclose(floats.pixels, values)


def test_jpeg_greyscale() -> None:
    image = gradient()
    decoded = decode_image(encode(image, ".jpg"), "d.jpg")
    assert decoded.meta["format"] == "jpeg" and np.abs(decoded.pixels.astype(int) - image).max() <= 3


def test_grey_in_colour_container_is_accepted_colour_is_refused_or_converted() -> None:
    grey = gradient()
    decoded = decode_image(encode(cv2.merge([grey, grey, grey]), ".png"), "e.png")
    assert decoded.pixels.ndim == 2 and np.array_equal(decoded.pixels, grey)
    colour = np.zeros((16, 16, 3), np.uint8)
    colour[..., 2] = 200  # red in BGR
    data = encode(colour, ".png")
    with pytest.raises(UnsupportedImageError) as info:
        decode_image(data, "f.png")
    assert info.value.reason == "colour"
    luminance = decode_image(data, "f.png", colour_to_grey=True).pixels
    assert luminance.dtype == np.float32 and np.allclose(luminance, 0.299 * 200, atol=1e-3)


def multipage_tiff(pages: int = 3) -> bytes:
    frames = [Image.fromarray(np.full((16, 16), 40 * (i + 1), np.uint8)) for i in range(pages)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="TIFF", save_all=True, append_images=frames[1:])
    return buffer.getvalue()


def test_multi_frame_refused_unless_a_frame_is_chosen() -> None:
    data = multipage_tiff()
    with pytest.raises(UnsupportedImageError) as info:
        decode_image(data, "g.tiff")
    assert info.value.reason == "multi_frame"
    assert (decode_image(data, "g.tiff", frame=0).pixels == 40).all()
    assert (decode_image(data, "g.tiff", frame=2).pixels == 120).all()
    with pytest.raises(UnsupportedImageError, match="frame_index"):
        decode_image(data, "g.tiff", frame=3)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims ``width x height`` followed by a tiny IDAT: a decompression bomb's header."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")
    )


def test_pixel_limit_is_checked_from_the_header() -> None:
    start = time.perf_counter()
    with pytest.raises(UnsupportedImageError) as info:
        decode_image(png_header_only(60_000, 60_000), "bomb.png")
    assert info.value.reason == "too_large" and time.perf_counter() - start < 1.0
    with pytest.raises(UnsupportedImageError, match="too_large"):
        decode_image(png_header_only(9000, 6000), "big.png")  # 54 MP > 50 MP default
    with pytest.raises(UnsupportedImageError, match="too_large"):
        decode_image(encode(gradient(), ".png"), "small.png", max_pixels=1000)


@pytest.mark.parametrize(
    ("data", "key", "error", "reason"),
    [
        (b"", "empty.png", CorruptImageError, "empty"),
        (b"hello, not an image at all" * 10, "junk.png", CorruptImageError, "not_an_image"),
        (encode(gradient(size=64), ".png")[:300], "cut.png", CorruptImageError, "truncated"),
        (encode(np.zeros((4, 40), np.uint8), ".png"), "thin.png", UnsupportedImageError, "too_small"),
    ],
)
def test_bad_input_is_a_typed_error(data: bytes, key: str, error: type, reason: str) -> None:
    with pytest.raises(error) as info:
        decode_image(data, key)
    assert isinstance(info.value, ImageDecodeError)
    assert info.value.reason == reason and info.value.key == key and key in str(info.value)


def test_bad_options_are_value_errors() -> None:
    with pytest.raises(ValueError, match="max_pixels"):
        decode_image(b"x", "k", max_pixels=0)
    with pytest.raises(ValueError, match="frame"):
        decode_image(b"x", "k", frame=-1)


def test_decompression_bomb_is_refused_from_its_header() -> None:
    from pixelperfect.pipeline.decode.reader import UnsupportedImageError, decode_image

    bomb = corpus.png_bomb(10_000)  # ~100 KiB that would inflate to 100 MB
    tracemalloc.start()
    start = time.perf_counter()
    with pytest.raises(UnsupportedImageError) as info:
        decode_image(bomb, "bomb.png", max_pixels=50_000_000)
    elapsed = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert info.value.reason == "too_large" and elapsed < 0.5 and peak < 5_000_000, (elapsed, peak)
    for data, key in (
        (corpus.png_claiming(60000, 60000), "h.png"),
        (corpus.jpeg_claiming(65000, 65000), "h.jpg"),
        (corpus.tiff_claiming(100000, 100000), "h.tif"),
        (corpus.dicom(Rows=60000, Columns=60000), "h.dcm"),
    ):
        with pytest.raises(UnsupportedImageError, match="too_large"):
            decode_image(data, key)
