"""A corpus of broken and hostile image files, made from scratch, each with the failure reason it must produce.

``bad_corpus()`` returns ``(name, bytes, reason)``; ``mislabelled_corpus()`` returns valid images under a wrong
extension, which must decode by their content (``done``). Nothing here is downloaded.
"""

from __future__ import annotations

import io
import json
import struct
import zipfile
import zlib

import cv2
import numpy as np
from PIL import Image

# identifiers a good DICOM of the corpus carries; none may appear in clear anywhere the run writes
PATIENT_NAME = "Doe^Jane^Secretname"
PATIENT_ID = "PID-7391-SECRET"
ACCESSION = "ACC-55-SECRET"
BIRTH_DATE = "19610203"


def _png(arr: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", arr)
    assert ok
    return buf.tobytes()


def _jpeg(arr: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", arr, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return buf.tobytes()


def grey(size: int = 96, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size]
    return np.clip(x + y // 2 + rng.normal(0, 8, (size, size)), 0, 255).astype(np.uint8)


def colour(size: int = 96) -> np.ndarray:
    """A 'photo': a hue gradient, R, G and B far apart."""
    y, x = np.mgrid[0:size, 0:size]
    return np.stack([x * 255 // size, y * 255 // size, (size - x) * 255 // size], axis=-1).astype(np.uint8)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` (8-bit grey) with one tiny IDAT: a decompression bomb's
    header, without the bomb."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _chunk(b"IEND", b"")
    )


def png_bomb(side: int) -> bytes:
    """A real, valid ``side`` x ``side`` all-black 8-bit PNG: ~100 KiB that inflate to ``side**2`` bytes."""
    packer = zlib.compressobj(9)
    row = b"\0" * (side + 1)  # filter byte + pixels
    idat = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def png_garbage_idat(size: int = 64) -> bytes:
    ihdr = struct.pack(">IIBBBBB", size, size, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", b"\x13\x37" * 200) + _chunk(b"IEND", b"")


def png_corrupt_idat() -> bytes:
    """A complete PNG whose compressed pixel data was damaged (bytes overwritten mid-stream, CRC made to match,
    as a bad disk sector copied by a tool that recomputes checksums would leave it)."""
    data = bytearray(_png(grey(64)))
    idat = data.find(b"IDAT")
    length = struct.unpack(">I", data[idat - 4 : idat])[0]
    start = idat + 4
    data[start + 2 : start + length] = bytes([0xFF]) * (length - 2)
    data[start + length : start + length + 4] = struct.pack(">I", zlib.crc32(bytes(data[idat : start + length])))
    return bytes(data)


def jpeg_claiming(width: int, height: int) -> bytes:
    """A valid small JPEG with its SOF0 frame header patched to claim ``width`` x ``height``."""
    data = bytearray(_jpeg(grey(64)))
    sof = data.find(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def tiff_claiming(width: int, height: int) -> bytes:
    """A little-endian baseline TIFF whose IFD claims ``width`` x ``height`` 8-bit grey with one tiny strip."""
    entries = [
        (256, 4, 1, width),
        (257, 4, 1, height),
        (258, 3, 1, 8),
        (259, 3, 1, 1),
        (262, 3, 1, 1),
        (273, 4, 1, 8),
        (277, 3, 1, 1),
        (278, 4, 1, height),
        (279, 4, 1, 16),
    ]
    strip = b"\0" * 16
    ifd_offset = 8 + len(strip)
    ifd = (
        struct.pack("<H", len(entries))
        + b"".join(struct.pack("<HHII", tag, kind, count, value) for tag, kind, count, value in entries)
        + b"\0\0\0\0"
    )
    return b"II*\0" + struct.pack("<I", ifd_offset) + strip + ifd


def tiff_pages(n: int = 2) -> bytes:
    buf = io.BytesIO()
    pages = [Image.fromarray(grey(64, seed=i)) for i in range(n)]
    pages[0].save(buf, format="TIFF", save_all=True, append_images=pages[1:])
    return buf.getvalue()


def apng(n: int = 2) -> bytes:
    buf = io.BytesIO()
    frames = [Image.fromarray(grey(64, seed=i)) for i in range(n)]
    frames[0].save(buf, format="PNG", save_all=True, append_images=frames[1:])
    return buf.getvalue()


def dicom(
    pixels: np.ndarray | None = None,
    *,
    frames: int = 1,
    rgb: bool = False,
    drop_pixels: bool = False,
    syntax: str | None = None,
    identifiers: bool = False,
    **attrs: object,
) -> bytes:
    """A CR DICOM file built with pydicom; ``attrs`` override attributes after the defaults are set."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    arr = grey(64) if pixels is None else pixels
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax or ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.ViewPosition = "CR", "PA"
    if identifiers:
        ds.PatientName, ds.PatientID = PATIENT_NAME, PATIENT_ID
        ds.AccessionNumber, ds.PatientBirthDate = ACCESSION, BIRTH_DATE
        ds.InstitutionName, ds.ReferringPhysicianName = "St Secret Hospital", "Dr^Secret"
    ds.Rows, ds.Columns = arr.shape[0], arr.shape[1]
    if rgb:
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        data = np.ascontiguousarray(arr, np.uint8).tobytes()
    else:
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        data = np.ascontiguousarray(np.repeat(arr[None].astype("<u2") * 16, frames, axis=0)).tobytes()
    if frames > 1:
        ds.NumberOfFrames = frames
    if not drop_pixels:
        ds.PixelData = data
    for name, value in attrs.items():
        setattr(ds, name, value)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True, implicit_vr=False, little_endian=True)
    return buf.getvalue()


def bad_corpus() -> list[tuple[str, bytes, str]]:
    """(file name, bytes, the failure reason the worker must record)."""
    good_png, good_jpg, good_dcm = _png(grey(96)), _jpeg(grey(96)), dicom(grey(96))
    png16 = _png(grey(96).astype(np.uint16) * 257)
    pixel_start = good_dcm.find(b"\xe0\x7f\x10\x00")  # (7FE0,0010) Pixel Data
    html = b"<!DOCTYPE html><html><head><title>404 Not Found</title></head><body>nope</body></html>"
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as zf:
        zf.writestr("scan.png", good_png)
    rng = np.random.default_rng(5)
    return [
        # empty
        ("empty.png", b"", "empty"),
        ("empty.dcm", b"", "empty"),
        ("empty-no-extension", b"", "empty"),
        # truncated
        ("truncated-half.png", good_png[: len(good_png) // 2], "truncated"),
        ("truncated-after-header.png", good_png[:33], "truncated"),
        ("truncated-16bit.png", png16[: len(png16) * 2 // 3], "truncated"),
        ("truncated-half.jpg", good_jpg[: len(good_jpg) // 2], "truncated"),
        ("truncated-after-header.jpg", good_jpg[:180], "truncated"),
        ("truncated-pixels.dcm", good_dcm[: pixel_start + 2000], "truncated"),
        ("truncated-in-header.dcm", good_dcm[:200], "truncated"),
        # not images at all
        ("notes.dcm", b"Patient notes: nothing to see here.\n" * 10, "not_dicom"),
        ("page.png", html, "not_an_image"),
        ("page.dcm", html, "not_dicom"),
        ("data.jpg", json.dumps({"error": "AccessDenied"}).encode(), "not_an_image"),
        ("s3-error.png", b"<?xml version='1.0'?><Error><Code>AccessDenied</Code></Error>", "not_an_image"),
        ("text-no-extension", b"just some text\n" * 20, "not_an_image"),
        ("random.dcm", rng.bytes(4096), "not_dicom"),
        ("random-no-extension", rng.bytes(4096), "not_an_image"),
        # wrong extension, wrong content
        ("archive.png", zipped.getvalue(), "not_an_image"),
        ("report.jpg", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj<<>>endobj\n" * 8, "not_an_image"),
        # corrupt internals
        ("garbage-idat.png", png_garbage_idat(), "corrupt"),
        ("corrupt-idat.png", png_corrupt_idat(), "corrupt"),
        ("garbage-after-soi.jpg", b"\xff\xd8\xff\xe0" + rng.bytes(2000), "truncated"),
        ("short-pixel-data.dcm", dicom(PixelData=b"\0" * 1001), "truncated"),
        ("unknown-transfer-syntax.dcm", dicom(syntax="1.2.826.0.1.3680043.9.9999.1"), "missing_codec"),
        ("zero-rows.dcm", dicom(Rows=0), "zero_size"),
        # decompression bombs and absurd headers (refused from the header, before decoding)
        ("claims-60000x60000.png", png_claiming(60000, 60000), "too_large"),
        ("bomb-10000x10000.png", png_bomb(10_000), "too_large"),
        ("claims-65000x65000.jpg", jpeg_claiming(65000, 65000), "too_large"),
        ("claims-100000x100000.tif", tiff_claiming(100000, 100000), "too_large"),
        ("claims-60000x60000.dcm", dicom(Rows=60000, Columns=60000), "too_large"),
        # too small
        ("one-pixel.png", _png(np.full((1, 1), 128, np.uint8)), "too_small"),
        ("one-pixel.dcm", dicom(np.full((1, 1), 100, np.uint8)), "too_small"),
        ("sliver-4x300.png", _png(grey(300)[:4]), "too_small"),
        # colour
        ("photo.png", _png(colour()), "colour"),
        ("photo.jpg", _jpeg(colour()), "colour"),
        ("photo-rgba.png", _png(np.dstack([colour(), np.full((96, 96), 255, np.uint8)])), "colour"),
        ("photo-rgb.dcm", dicom(colour(), rgb=True), "colour"),
        # more than one frame
        ("three-frames.dcm", dicom(frames=3), "multi_frame"),
        ("two-pages.tif", tiff_pages(2), "multi_frame"),
        ("animated.png", apng(2), "multi_frame"),
        # DICOM without pixels
        ("no-pixel-data.dcm", dicom(drop_pixels=True), "no_pixel_data"),
        (
            "structured-report.dcm",
            dicom(drop_pixels=True, SOPClassUID="1.2.840.10008.5.1.4.1.1.88.11"),
            "no_pixel_data",
        ),
        # rescale that produces NaN or infinity
        ("rescale-nan.dcm", dicom(RescaleSlope="NaN", RescaleIntercept="0"), "nan_pixels"),
        ("rescale-inf.dcm", dicom(RescaleSlope="inf", RescaleIntercept="0"), "nan_pixels"),
        ("rescale-overflow.dcm", dicom(RescaleSlope="1e308", RescaleIntercept="1e308"), "nan_pixels"),
    ]


def mislabelled_corpus() -> list[tuple[str, bytes]]:
    """Valid greyscale images under the wrong extension: the content decides, so these end ``done``."""
    return [
        ("png-named.dcm", _png(grey(96, seed=1))),
        ("dicom-named.png", dicom(grey(96, seed=2))),
        ("jpeg-named.png", _jpeg(grey(96, seed=3))),
        ("png-named.tif", _png(grey(96, seed=4))),
    ]


#: S3 keys (relative to the archive prefix) that S3 stores literally but no store may follow; they end
#: ``invalid_key``.
TRAVERSAL_KEYS = ["../escape.png", "./dot.png", "/absolute.png", "back\\slash.png"]
