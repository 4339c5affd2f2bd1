"""The GPU decode path on the CPU: a stand-in for nvImageCodec's decoder (it decodes with the CPU codecs, fails
or raises on request), batching across threads and the per-image fallback to the CPU decoders."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from pixelperfect.pipeline.decode import codecs
from pixelperfect.pipeline.decode import gpu as gpu_decode
from pixelperfect.pipeline.decode.reader import decode_image
from pixelperfect.synthetic.archive_phantoms import ARCHIVE_KINDS, archive_phantom, encoder_missing

KINDS = [k for k in ("jpeg_baseline", "jpeg_lossless_sv1", "j2k_lossless") if not encoder_missing(ARCHIVE_KINDS[k])]


class HostImage:
    """What nvImageCodec's ``Image.cpu()`` gives: an array-like ``(H, W, 1)``."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array[..., None]

    def cpu(self) -> np.ndarray:
        return self.array


class StandInDecoder:
    """Decodes with the CPU chain; ``fail``: stream prefixes it answers ``None`` for; ``explode``: raise."""

    def __init__(self, fail: tuple[bytes, ...] = (), explode: bool = False, wrong_shape: bool = False) -> None:
        self.fail, self.explode, self.wrong_shape = fail, explode, wrong_shape
        self.batches: list[int] = []
        self.lock = threading.Lock()

    def decode(self, streams: list[bytes], params: Any = None) -> list[Any]:
        with self.lock:
            self.batches.append(len(streams))
        if self.explode:
            raise RuntimeError("nvjpeg: out of device memory")
        out: list[Any] = []
        for stream in streams:
            if any(stream.startswith(p) for p in self.fail):
                out.append(None)
                continue
            array = _cpu_decode(stream)
            out.append(HostImage(array[:-1] if self.wrong_shape else array))
        return out


def _cpu_decode(stream: bytes) -> np.ndarray:
    import imagecodecs

    if stream.startswith(b"\xff\x4f"):
        return np.asarray(imagecodecs.jpeg2k_decode(stream))
    return np.asarray(imagecodecs.jpeg8_decode(stream))


@pytest.fixture(autouse=True)
def _cpu_chains() -> Iterator[None]:
    yield
    gpu_decode.enable(None)


@pytest.fixture(scope="module")
def files() -> list[tuple[str, bytes]]:
    if not codecs.available("imagecodecs"):
        pytest.skip("the stand-in decoder uses imagecodecs")
    return [(f"{kind}-{i}.dcm", archive_phantom(kind, i, shape=(200, 160))[0]) for kind in KINDS for i in (0, 1)]


def _decode_all(files: list[tuple[str, bytes]], model_side: int | None = None) -> list[np.ndarray]:
    with ThreadPoolExecutor(len(files)) as pool:  # the worker's fetch threads, one image each
        return list(pool.map(lambda item: decode_image(item[1], item[0], model_side=model_side).pixels, files))


def test_gpu_batches_across_threads_and_matches_the_cpu(files: list[tuple[str, bytes]]) -> None:
    expected = _decode_all(files)
    stand_in = StandInDecoder()
    gpu = gpu_decode.GpuDecoder(decoder=stand_in, wait_s=0.2, max_batch=len(files))
    gpu_decode.enable(gpu)
    assert codecs.codecs_for(codecs.J2K_LOSSLESS)[0].name == "nvimgcodec"
    assert codecs.codecs_for(codecs.J2K_LOSSLESS, reduced=True)[0].name == "nvimgcodec"
    got = _decode_all(files)
    assert gpu.frames == len(files) and gpu.failures == 0
    assert len(stand_in.batches) < len(files)  # frames from several threads shared device calls
    for a, b in zip(got, expected, strict=True):
        assert a.dtype == b.dtype and np.array_equal(a, b)


@pytest.mark.parametrize("mode", ["none_for_some", "raises", "wrong_shape"])
def test_gpu_failures_fall_back_to_the_cpu_per_image(files: list[tuple[str, bytes]], mode: str) -> None:
    expected = _decode_all(files)
    stand_in = StandInDecoder(
        fail=(b"\xff\x4f",) if mode == "none_for_some" else (),  # every JPEG 2000 frame fails on the "device"
        explode=mode == "raises",
        wrong_shape=mode == "wrong_shape",
    )
    gpu = gpu_decode.GpuDecoder(decoder=stand_in, wait_s=0.05)
    gpu_decode.enable(gpu)
    got = _decode_all(files)
    for a, b in zip(got, expected, strict=True):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    assert gpu.frames == len(files)  # every frame went to the "device" first
    if mode == "none_for_some":
        assert gpu.failures == sum("j2k" in name for name, _ in files) > 0
    elif mode == "raises":
        assert gpu.failures == len(files)  # a shape that is not the dataset's is refused by decode_frame instead


def test_a_gpu_decode_is_full_resolution_and_keeps_the_grid(files: list[tuple[str, bytes]]) -> None:
    gpu_decode.enable(gpu_decode.GpuDecoder(decoder=StandInDecoder(), wait_s=0.0))
    name, data = next(item for item in files if item[0].startswith("j2k"))
    image = decode_image(data, name, model_side=64)  # the device decodes at full size; no reduced level
    assert image.shape == image.full_shape == (200, 160) and image.scale == 1


def test_signed_j2k_codestreams_stay_on_the_cpu() -> None:
    if not codecs.available("openjpeg"):
        pytest.skip("pylibjpeg-openjpeg encodes the JPEG 2000 files")
    from pixelperfect.pipeline.decode import dicom
    from tests.pipeline.decode.test_codecs_signed import parsed, reference, signed_dicom

    gpu = gpu_decode.GpuDecoder(decoder=StandInDecoder(), wait_s=0.0)
    gpu_decode.enable(gpu)
    data = signed_dicom("j2k_signed", 16, 12, patterns=False)
    stored = dicom.decode_stored(parsed(data), "s.dcm")
    assert gpu.frames == 0 and stored.decoder != "nvimgcodec"  # the device is not asked for a signed codestream
    assert np.array_equal(stored.array, reference(data))
    unsigned_stream = signed_dicom("j2k_unsigned", 16, 12, patterns=True)  # signed values, unsigned codestream
    stored = dicom.decode_stored(parsed(unsigned_stream), "u.dcm")
    assert gpu.frames == 1 and stored.decoder == "nvimgcodec"
    assert np.array_equal(stored.array, reference(unsigned_stream))


def test_enable_for_device_leaves_the_cpu_alone_without_cuda() -> None:
    assert gpu_decode.enable_for_device("cpu") is None
    assert all(codec.name != "nvimgcodec" for codec in codecs.codecs_for(codecs.JPEG_BASELINE))
    with pytest.raises(ValueError):
        gpu_decode.GpuDecoder(decoder=StandInDecoder(), max_batch=0)


@pytest.mark.gpu
def test_nvimgcodec_on_a_real_device_matches_the_cpu(files: list[tuple[str, bytes]]) -> None:
    if not codecs.available("nvidia.nvimgcodec"):
        pytest.skip("nvImageCodec is not installed (the gpu extra)")
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    expected = _decode_all(files)
    gpu = gpu_decode.enable_for_device("cuda")
    assert gpu is not None
    got = _decode_all(files)
    assert gpu.frames == len(files)  # every frame went to the device first (a failure there falls back)
    for (name, _), a, b in zip(files, got, expected, strict=True):
        tolerance = 1.0 if name.startswith("jpeg_baseline") else 0.0  # IDCT rounding of lossy JPEG
        assert np.abs(a.astype(np.float64) - b).max() <= tolerance, name
