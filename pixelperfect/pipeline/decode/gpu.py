"""JPEG and JPEG 2000 frames decoded on a CUDA device with NVIDIA nvImageCodec, batched, with the CPU as fallback.

nvImageCodec (pip ``nvidia-nvimgcodec-cu13``, the ``gpu`` extra) decodes a list of codestreams in one call on the
GPU (nvJPEG, nvJPEG2000). The worker decodes images on several fetch threads at once, one image per call, so
:class:`GpuDecoder` gathers the frames that arrive within ``wait_s`` of each other (at most ``max_batch``) into
one batched call: the first caller of a round leads it, the others wait for their result.

It sits at the front of :mod:`~pixelperfect.pipeline.decode.codecs`' decoder chains once :func:`enable` installed it
(:func:`gpu_syntaxes`): an image the device cannot decode (``None`` from the batch, an exception, a shape that
is not the dataset's) falls through to the next decoder of the chain, the CPU ones, image by image. Reduced
resolution stays a CPU feature: a request for it skips the GPU. Pixels come back to the host (``uint8`` /
``uint16``): the display transform and the preprocessing variants run on the CPU.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from pixelperfect.pipeline.decode import codecs

log = logging.getLogger(__name__)


def gpu_syntaxes() -> tuple[str, ...]:
    """The transfer syntaxes nvImageCodec decodes: JPEG (baseline, extended, lossless) and JPEG 2000."""
    ts = codecs.syntaxes()
    return ts.JPEG_SYNTAXES + ts.JPEG_LOSSLESS_SYNTAXES + ts.J2K_SYNTAXES


#: Frames per device call, and how long the first frame of a round waits for others (seconds).
MAX_BATCH = 16
WAIT_S = 0.003


class GpuDecoder:
    """Batched frame decoding on one CUDA device.

    ``decoder``: an object with ``decode(streams, params=...)`` returning one image (``None`` for a failure) per
    stream, as ``nvidia.nvimgcodec.Decoder``; built for ``device_id`` when not given (tests inject one).
    ``max_batch`` and ``wait_s`` bound a round (see the module docstring).
    """

    name = "nvimgcodec"

    def __init__(
        self,
        device_id: int = 0,
        *,
        decoder: Any | None = None,
        params: Any | None = None,
        max_batch: int = MAX_BATCH,
        wait_s: float = WAIT_S,
    ) -> None:
        if max_batch < 1 or wait_s < 0:
            raise ValueError(f"max_batch must be >= 1 and wait_s >= 0, got {max_batch=}, {wait_s=}")
        if decoder is None:
            from nvidia import nvimgcodec

            decoder = nvimgcodec.Decoder(device_id=device_id)
            params = nvimgcodec.DecodeParams(color_spec=nvimgcodec.ColorSpec.UNCHANGED, allow_any_depth=True)
        self._decoder, self._params = decoder, params
        self.max_batch, self.wait_s = max_batch, wait_s
        self._lock = threading.Condition()
        self._pending: list[tuple[bytes, dict[str, Any]]] = []
        self._leading = False
        self.calls = self.frames = self.failures = 0  # counters for the benchmark and tests

    def decode_batch(self, streams: Sequence[bytes]) -> list[np.ndarray | None]:
        """One device call for ``streams``: per stream a ``(H, W)`` host array, or ``None`` where it failed."""
        self.calls += 1
        self.frames += len(streams)
        try:
            images = list(self._decoder.decode(list(streams), params=self._params))
        except Exception as exc:  # the whole call failed: every frame goes back to the CPU
            log.warning("GPU decode of %d frames failed: %s", len(streams), exc)
            images = [None] * len(streams)
        out: list[np.ndarray | None] = []
        for image in images + [None] * (len(streams) - len(images)):
            try:
                array = None if image is None else np.asarray(image.cpu() if hasattr(image, "cpu") else image)
            except Exception:
                array = None
            if array is not None and array.ndim == 3 and array.shape[-1] == 1:
                array = array[..., 0]
            if array is None or array.ndim != 2:
                self.failures += 1
                array = None
            out.append(array)
        return out

    def decode(self, stream: bytes) -> np.ndarray | None:
        """One frame, batched with those other threads submit at the same time; ``None`` if the device failed."""
        slot: dict[str, Any] = {}
        with self._lock:
            self._pending.append((stream, slot))
            self._lock.notify_all()  # a leader gathering a round counts this frame
            if self._leading:
                while "result" not in slot:
                    self._lock.wait()
                return slot["result"]  # type: ignore[no-any-return]
            self._leading = True
            deadline = time.monotonic() + self.wait_s
            while len(self._pending) < self.max_batch and (left := deadline - time.monotonic()) > 0:
                self._lock.wait(left)
        try:
            while True:  # rounds until nothing is pending: frames that arrive meanwhile ride the next one
                with self._lock:
                    batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
                    if not batch:
                        self._leading = False
                        break
                results = self.decode_batch([s for s, _ in batch])
                with self._lock:
                    for (_, waiting), result in zip(batch, results, strict=True):
                        waiting["result"] = result
                    self._lock.notify_all()
        except BaseException:
            with self._lock:  # this thread is going away: nobody may wait on it
                for _, waiting in self._pending:
                    waiting.setdefault("result", None)
                self._pending, self._leading = [], False
                self._lock.notify_all()
            raise
        return slot["result"]  # type: ignore[no-any-return]

    def as_codec(self) -> codecs.Codec:
        """This decoder as the first link of :mod:`.codecs`' chains (``module``: always importable)."""
        return codecs.Codec(self.name, "numpy", self._decode_frame, bits=tuple(range(2, 17)))

    def _decode_frame(self, stream: bytes, info: codecs.FrameInfo, r: int) -> np.ndarray:
        if info.stream_signed:  # signed JPEG 2000 samples: the CPU decoders, whose sign handling is tested
            raise ValueError("signed JPEG 2000 codestreams are decoded on the CPU")
        array = self.decode(stream)
        if array is None:
            raise ValueError("the GPU decoder failed on this frame")
        return array


_ENABLED: GpuDecoder | None = None
_UNAVAILABLE: set[str] = set()  # devices found without CUDA or nvImageCodec: not asked again


def enable(decoder: GpuDecoder | None) -> None:
    """Put ``decoder`` at the front of the chains of :func:`gpu_syntaxes` (``None``: take it out again)."""
    global _ENABLED
    for syntax in gpu_syntaxes():
        chain = [codec for codec in codecs.CODECS.get(syntax, []) if codec.name != GpuDecoder.name]
        codecs.CODECS[syntax] = ([decoder.as_codec()] if decoder is not None else []) + chain
    _ENABLED = decoder


def enabled() -> GpuDecoder | None:
    return _ENABLED


def enable_for_device(device: str, *, factory: Callable[[int], GpuDecoder] = GpuDecoder) -> GpuDecoder | None:
    """Install a :class:`GpuDecoder` when ``device`` (``auto``, ``cuda``, ``cuda:N``, ``cpu``) is a CUDA device
    and nvImageCodec is installed; otherwise leave the CPU decoders alone. Idempotent; returns the decoder."""
    if _ENABLED is not None or device == "cpu" or device in _UNAVAILABLE:
        return _ENABLED
    if not codecs.available("nvidia.nvimgcodec"):
        _UNAVAILABLE.add(device)
        return None
    try:
        import torch

        if not torch.cuda.is_available():
            _UNAVAILABLE.add(device)
            return None
        index = int(device.split(":", 1)[1]) if device.startswith("cuda:") else torch.cuda.current_device()
        decoder = factory(index)
    except Exception as exc:  # a broken install must not stop the worker: the CPU decodes
        log.warning("nvImageCodec is installed but unusable (%s); decoding on the CPU", exc)
        _UNAVAILABLE.add(device)
        return None
    enable(decoder)
    log.info("decoding JPEG / JPEG 2000 on cuda:%d with nvImageCodec", index)
    return decoder
