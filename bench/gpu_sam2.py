"""SAM 2.1 on one GPU (``PP_GPU_PARTS=sam2 bash bench/gpu.sh``): encoder images/s of hiera-tiny, base-plus and
large at encoder batch 1, 8 and 32 under bf16 autocast (the worker's default on CUDA) with each chunk's peak
memory, then end-to-end images/s of base-plus through ``process_images`` (1024² phantoms, their boxes, K = 4,
scores, consistency, PNGs). Seeded random weights (timing only). transformers' ``Sam2Model`` as the image has it
(the lent image carries transformers 5.17.0; the oracle tests run 5.25.0): this script builds the segmenter
directly, so the workers' version gate (``builder.MIN_TRANSFORMERS``) does not stop it, and prints the version.

``--budget SECONDS``: measures that no longer fit are dropped, largest last. ``--smoke``: ``sam2_tiny`` on a CPU,
batches 1 and 2, the plumbing only.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import Measure

ESTIMATE_S = 240
MIN_S = 90
SMOKE_S = 150
TESTS = ("tests/pipeline/model/test_sam2.py",)  # -m gpu: bf16 encoder + fp32 decoder vs fp32 masks
TESTS_S = 60


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=240.0)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    started = time.monotonic()

    import torch
    import transformers

    from pixelperfect.pipeline.model.sam2 import Sam2Segmenter, load_sam2
    from pixelperfect.pipeline.options import Jitter
    from pixelperfect.pipeline.preprocess.variants import parse_variant
    from pixelperfect.pipeline.stages import ImageInput, ProcessSettings, process_images
    from pixelperfect.synthetic.phantoms import display_uint8, make_phantom

    cuda = torch.cuda.is_available() and not args.smoke
    device = torch.device("cuda" if cuda else "cpu")
    models = ("sam2_tiny",) if args.smoke else ("sam2.1_hiera_tiny", "sam2.1_hiera_base_plus", "sam2.1_hiera_large")
    batches = (1, 2) if args.smoke else (1, 8, 32)
    print(f"# gpu_sam2: transformers {transformers.__version__}, torch {torch.__version__}, device {device}"
          + (f" ({torch.cuda.get_device_name()})" if cuda else ""), flush=True)  # fmt: skip

    def left() -> float:
        return args.budget - (time.monotonic() - started)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    for model in models:
        if left() < 30:
            print(f"# {model}: skipped, {left():.0f} s of the budget left", flush=True)
            continue
        seg = Sam2Segmenter(load_sam2(model, None), device, name=model, encoder_batch=max(batches), precision="auto")
        side = seg.input_side
        image = display_uint8(make_phantom(0, seed=3, size=side, positive_fraction=1.0).image)
        item = seg.prepare(image)
        for batch in batches:
            if left() < 15:
                print(f"# {model} batch {batch}: skipped, {left():.0f} s left", flush=True)
                break
            seg.encoder_batch = batch
            chunk = [item] * batch
            seg.encode(chunk)  # warm-up: kernel selection, allocations
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            sync()
            repeats, t0 = 0, time.perf_counter()
            while repeats < 3 or (time.perf_counter() - t0 < 3.0 and repeats < 20):
                seg.encode(chunk)
                sync()
                repeats += 1
            rate = batch * repeats / (time.perf_counter() - t0)
            peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
            Measure("P6", f"SAM 2.1 encoder images/s {model} batch {batch} "
                          f"{'bf16' if seg.bf16 else 'fp32'} {side}²", rate, "images/s",
                    details=[f"peak GPU memory {peak:.2f} GiB" if cuda else "CPU smoke"]).print()  # fmt: skip
        del seg
        if cuda:
            torch.cuda.empty_cache()

    e2e = "sam2_tiny" if args.smoke else "sam2.1_hiera_base_plus"
    if left() < 40:
        print(f"# end-to-end {e2e}: skipped, {left():.0f} s left", flush=True)
        return
    seg = Sam2Segmenter(load_sam2(e2e, None), device, name=e2e, encoder_batch=2 if args.smoke else 8)
    side = seg.input_side
    phantoms, index = [], 0
    while len(phantoms) < (4 if args.smoke else 32):
        ph = make_phantom(index, seed=4, size=max(side, 256), positive_fraction=1.0)
        index += 1
        if ph.boxes:
            phantoms.append(ImageInput(ph.id, ph.image, [list(map(float, b)) for b in ph.boxes], gt_mask=ph.mask))
    settings = ProcessSettings(jitter=Jitter(k=4))
    variants = [parse_variant("raw")]
    process_images(phantoms[:2], variants, seg, settings)  # warm-up
    sync()
    t0 = time.perf_counter()
    done = 0
    for start in range(0, len(phantoms), seg.encoder_batch):
        if left() < 10:
            break
        group = phantoms[start : start + seg.encoder_batch]
        process_images(group, variants, seg, settings)
        done += len(group)
    sync()
    seconds = time.perf_counter() - t0
    Measure("P6", f"SAM 2.1 end-to-end images/s {e2e} (process_images, K=4, encoder batch {seg.encoder_batch})",
            done / max(seconds, 1e-9), "images/s",
            details=[f"{done} images of {phantoms[0].pixels.shape[0]}² px in {seconds:.1f} s, one process; "
                     f"{'bf16 encoder, fp32 decoder' if seg.bf16 else 'fp32'}"]).print()  # fmt: skip
    print(f"# gpu_sam2 took {time.monotonic() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
