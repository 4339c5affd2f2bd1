"""P16g: SAM 3 concept prompts on one GPU — images/s at encoder batch 1 and 8, vision encoder in bf16.

The default ``Sam3Config`` (the facebook/sam3 detector) with seeded random weights (timing only), one phrase,
K = 0, 1024² phantoms through ``process_images`` (preprocessing, batched vision encoder, the decoder, scoring,
mask PNGs), then P3c (``bench/p3c_concept.py``'s ratios) on the GPU when the budget allows. Run by
``bench/gpu.sh`` as the ``sam3`` part (``PP_GPU_PARTS=sam3``); ``--smoke`` runs the same code on a CPU with the
small ``cpu`` architecture (numbers meaningless).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from common import Measure

ESTIMATE_S = 180
MIN_S = 90
SMOKE_S = 240
TESTS: tuple[str, ...] = ()  # the SAM 3 tests are CPU tests (tests/pipeline/model/test_sam3.py), none marked gpu
TESTS_S = 0
STARTED = time.perf_counter()
HERE = Path(__file__).resolve().parent


def images_per_s(seg, images, batch: int, settings, repeats: int) -> float:  # type: ignore[no-untyped-def]
    import torch

    from pixelperfect.pipeline.preprocess.variants import parse_variant
    from pixelperfect.pipeline.stages import process_images

    variants = [parse_variant("raw")]
    seg.encoder_batch = batch
    process_images(images[:batch], variants, seg, settings)  # warm-up at this batch size
    best = 0.0
    for _ in range(repeats):
        if seg.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for start in range(0, len(images), batch):
            process_images(images[start : start + batch], variants, seg, settings)
        if seg.device.type == "cuda":
            torch.cuda.synchronize()
        best = max(best, len(images) / (time.perf_counter() - t0))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=180.0, help="seconds this part may take")
    parser.add_argument("--smoke", action="store_true", help="CPU, small architecture: the plumbing only")
    args = parser.parse_args()

    import importlib.util

    if importlib.util.find_spec("transformers") is None:
        # the lent image has transformers (5.17.0 when last read; its Sam3 API is the one used here); the rehearsal's
        # venv (bench/gpu-rehearsal.txt) does not carry it
        print("# P16g skipped: transformers is not installed in this interpreter", flush=True)
        sys.exit(0 if args.smoke else 1)

    import torch
    from p3c_concept import segmenter

    from pixelperfect.pipeline.options import ConceptSettings, Jitter, ProcessSettings, PromptMode
    from pixelperfect.pipeline.stages import ImageInput
    from pixelperfect.synthetic.phantoms import make_phantom

    cuda = torch.cuda.is_available() and not args.smoke
    seg = segmenter("full" if cuda else "cpu", "cuda" if cuda else "cpu")
    n, size = (16, 1024) if cuda else (2, 256)
    images = [ImageInput(p.id, p.image, []) for p in (make_phantom(i, seed=0, size=size) for i in range(n))]
    settings = ProcessSettings(
        prompt_mode=PromptMode.concept, jitter=Jitter(k=0), concept=ConceptSettings(concepts=("lung opacity",))
    )
    device = torch.cuda.get_device_name() if cuda else "CPU (smoke: numbers meaningless)"
    for batch in (1, 8) if cuda else (1, 2):
        if time.perf_counter() - STARTED > args.budget * 0.6:
            print(f"# P16g batch {batch} skipped: budget", flush=True)
            continue
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        rate = images_per_s(seg, images, batch, settings, repeats=2 if cuda else 1)
        peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0
        Measure("P16g", f"SAM 3 concept images/s at encoder batch {batch}, bf16 vision", rate, unit="images/s",
                details=[f"{device}; {n} phantoms of {size}², 1 phrase, K=0; peak {peak:.1f} GiB"]).print()  # fmt: skip
    left = args.budget - (time.perf_counter() - STARTED)
    if cuda and left > 60:
        del seg
        torch.cuda.empty_cache()
        cmd = [sys.executable, str(HERE / "p3c_concept.py"), "--device", "cuda", "--images", "4"]
        subprocess.run(cmd, timeout=max(10.0, left - 10), check=False)
    print(f"# gpu_sam3 total {time.perf_counter() - STARTED:.0f} s", flush=True)


if __name__ == "__main__":
    main()
