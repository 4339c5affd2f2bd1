"""P11g: JPEG / JPEG 2000 DICOM decoding on the GPU (nvImageCodec) against the CPU decoders, on archive phantoms.

Per kind: the device's batched decode of the bare codestreams (frames/s, batches of ``--batch``), and the whole
``decode_image`` (DICOM parse, decode, VOI) on ``--threads`` fetch threads as the worker runs it, with the GPU
decoder installed and without (images/s, and their ratio). The GPU's pixels are checked against the CPU's:
identical for lossless syntaxes, within ±1 for lossy ones. Run by ``bench/gpu.sh`` (needs CUDA + nvImageCodec;
``--smoke`` runs the plumbing on a CPU with a stand-in decoder, numbers meaningless).
"""

from __future__ import annotations

import argparse
import io
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from common import Measure

from pixelperfect.pipeline.decode import codecs, dicom
from pixelperfect.pipeline.decode import gpu as gpu_decode
from pixelperfect.pipeline.decode.reader import decode_image
from pixelperfect.synthetic.archive_phantoms import ARCHIVE_KINDS, archive_phantom, encoder_missing

KINDS = {"jpeg_baseline": 32, "jpeg_lossless_sv1": 8, "j2k_lossless": 8, "j2k_lossy": 8}
STARTED = time.perf_counter()
KIND_S = 30  # the most one kind is expected to take on a lent machine (phantom encoding, three decode passes)


def images_per_s(files: list[bytes], threads: int, repeats: int = 2) -> tuple[float, list[np.ndarray]]:
    best, out = 0.0, []
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(repeats):
            t0 = time.perf_counter()
            out = list(pool.map(lambda data: decode_image(data, "k.dcm").pixels, files))
            best = max(best, len(files) / (time.perf_counter() - t0))
    return best, out


def measure(kind: str, n: int, gpu: gpu_decode.GpuDecoder, threads: int, batch: int) -> list[Measure]:
    spec = ARCHIVE_KINDS[kind]
    if encoder_missing(spec):
        print(f"# P11g {kind}: skipped, its encoder needs {encoder_missing(spec)}", flush=True)
        return []
    files = [archive_phantom(kind, i % 4)[0] for i in range(n)]
    streams = []
    for data in files:
        found = dicom.fast_frame(dicom.parse_dicom(data, "k", max_pixels=10**9, frame=None, colour_to_grey=False))
        assert found is not None
        streams.append(found[0])
    gpu.decode_batch(streams[:batch])  # warm: device buffers, codec plugins
    t0 = time.perf_counter()
    decoded = []
    for start in range(0, len(streams), batch):
        decoded.extend(gpu.decode_batch(streams[start : start + batch]))
    device_rate = len(streams) / (time.perf_counter() - t0)
    gpu_decode.enable(None)
    cpu_rate, cpu_pixels = images_per_s(files, threads)
    gpu_decode.enable(gpu)
    gpu_rate, gpu_pixels = images_per_s(files, threads)
    failed = sum(d is None for d in decoded)
    diff = max(float(np.abs(a.astype(np.float64) - b).max()) for a, b in zip(gpu_pixels, cpu_pixels, strict=True))
    rows, cols = spec.shape
    what = f"{kind} {cols}x{rows}"
    detail = (f"{failed} of {len(streams)} frames fell back to the CPU; largest pixel difference GPU vs CPU "
              f"{diff:g} ({'lossy: <= 1 expected' if spec.lossy else 'lossless: 0 expected'})")  # fmt: skip
    return [
        Measure("P11g", f"{what} device decode, batches of {batch}", device_rate, "frames/s", details=[detail]),
        Measure("P11g", f"{what} decode_image on {threads} threads, GPU", gpu_rate, "images/s",
                details=[f"CPU decoders on the same threads: {cpu_rate:.1f} images/s"]),
        Measure("P11g", f"{what} decode_image GPU / CPU images/s", gpu_rate / cpu_rate),
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--smoke", action="store_true", help="CPU plumbing check with a stand-in decoder")
    parser.add_argument("--budget", type=float, default=600.0, help="seconds; the kinds left are skipped beyond it")
    args = parser.parse_args()
    if args.smoke:  # a CPU stand-in for nvImageCodec from what the lent machine has: no imagecodecs (issue 33)
        import openjpeg
        from PIL import Image

        class StandIn:
            def decode(self, streams: list[bytes], params: object = None) -> list[np.ndarray]:
                return [np.asarray(openjpeg.decode(s)) if s.startswith(b"\xff\x4f")
                        else np.asarray(Image.open(io.BytesIO(s))) for s in streams]  # fmt: skip

        gpu = gpu_decode.GpuDecoder(decoder=StandIn())
        kinds = {"jpeg_baseline": 4, "j2k_lossy": 2}
    else:
        decoder = gpu_decode.enable_for_device("cuda")
        if decoder is None:
            print("# P11g: no CUDA device or nvImageCodec: GPU decoding not measured", flush=True)
            return
        gpu, kinds = decoder, KINDS
    gpu_decode.enable(gpu)
    print(f"# decoders: {', '.join(c.name for c in codecs.codecs_for(codecs.J2K_LOSSLESS))} (JPEG 2000)", flush=True)
    for kind, n in kinds.items():
        if time.perf_counter() - STARTED > args.budget - KIND_S:
            print(f"# P11g {kind}: skipped, less than {KIND_S} s of the {args.budget:.0f} s budget left", flush=True)
            continue
        for result in measure(kind, n, gpu, args.threads, args.batch):
            result.print()


if __name__ == "__main__":
    main()
