"""P8: bf16 on a CPU — ViT-B (random seeded weights) encoder time per 1024² image, fp32 vs bf16 autocast, side by
side on the same images, and the masks' agreement (bf16 encoder + fp32 decoder against fp32, box prompts and their
jitter). Not a goal of issue 8: it tells a CPU-only deployment whether ``PIXELPERFECT_PRECISION=bf16`` pays (it
does only on CPUs with BF16 instructions: AVX512-BF16 or AMX), and checks the agreement the GPU test asserts.

``--model sam2.1_hiera_tiny``: the same for SAM 2.1 hiera-tiny (transformers' ``Sam2Model``, seeded random
weights, bf16 encoder + fp32 prompt encoder and mask decoder); its lines carry the CPU's bf16 flags, and the IoU
goal (>= 0.98) only on a CPU with native bf16 (on an AVX2-only CPU the numbers stand without a goal).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from common import Measure, load_average


def bf16_flags() -> list[str]:
    """The CPU's native bf16 instructions (``/proc/cpuinfo`` flags), empty on an AVX2-only CPU."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return sorted(f for f in flags if f in ("avx512_bf16", "amx_bf16", "amx_tile", "avx_ne_convert"))


def run_sam2(model: str, n_images: int, repeats: int) -> list[Measure]:
    import torch

    from pixelperfect.pipeline.model.sam2 import Sam2Segmenter, load_sam2
    from pixelperfect.pipeline.options import Jitter
    from pixelperfect.pipeline.prompt.boxes import perturb_box, prompt_rng
    from pixelperfect.synthetic.phantoms import display_uint8, make_phantom

    net = load_sam2(model, None)
    cpu = torch.device("cpu")
    segs = {p: Sam2Segmenter(net, cpu, name=model, encoder_batch=1, precision=p) for p in ("fp32", "bf16")}
    phantoms = [make_phantom(i, seed=5, size=1024, positive_fraction=1.0) for i in range(n_images)]
    inputs = [segs["fp32"].prepare(display_uint8(p.image)) for p in phantoms]
    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    embeddings: dict[str, list[object]] = {}
    segs["bf16"].encode(inputs[:1])
    for _ in range(repeats):
        for precision, seg in segs.items():
            t0 = time.perf_counter()
            embeddings[precision] = seg.encode(inputs)
            times[precision].append((time.perf_counter() - t0) / n_images)
    ious = []
    for i, phantom in enumerate(phantoms):
        base = np.array(phantom.boxes, np.float64).reshape(-1, 4)
        boxes = np.concatenate([base] + [perturb_box(b, Jitter(), prompt_rng(0, str(i), p), 1024, 1024)
                                         for p, b in enumerate(base)])  # fmt: skip
        a = segs["fp32"].predict_boxes(embeddings["fp32"][i], boxes).masks
        b = segs["bf16"].predict_boxes(embeddings["bf16"][i], boxes).masks
        ious += [np.count_nonzero(x & y) / max(1, np.count_nonzero(x | y)) for x, y in zip(a, b, strict=True)]
    fp32, bf16 = min(times["fp32"]), min(times["bf16"])
    flags = bf16_flags()
    native = f"native bf16: {', '.join(flags)}" if flags else "no native bf16 (AVX2-only?): no goal"
    return [
        Measure("P8", f"CPU encoder time per image bf16 / fp32 ({model} 1024², random weights)", bf16 / fp32,
                details=[f"fp32 {fp32:.2f} s/image, bf16 {bf16:.2f} s/image (best of {repeats}; {n_images} images, "
                         f"{torch.get_num_threads()} torch threads); load average {load_average():.2f}; {native}"]),
        Measure("P8", f"{model} mask IoU bf16 encoder vs fp32 ({len(ious)} prompts incl. jitter)",
                float(np.mean(ious)), "IoU", goal=">=0.98" if flags else "",
                details=[f"minimum {min(ious):.4f}; {native}"]),
    ]  # fmt: skip


def run(n_images: int, repeats: int) -> list[Measure]:
    import torch

    from pixelperfect.pipeline.model.sam import SamSegmenter
    from pixelperfect.pipeline.model.weights import load_sam
    from pixelperfect.pipeline.options import Jitter
    from pixelperfect.pipeline.prompt.boxes import perturb_box, prompt_rng
    from pixelperfect.synthetic.phantoms import display_uint8, make_phantom

    torch.manual_seed(0)
    sam = load_sam("sam_vit_b", None)
    cpu = torch.device("cpu")
    segs = {p: SamSegmenter(sam, cpu, name="sam_vit_b", encoder_batch=1, precision=p) for p in ("fp32", "bf16")}
    phantoms = [make_phantom(i, seed=5, size=1024, positive_fraction=1.0) for i in range(n_images)]
    inputs = [segs["fp32"].prepare(display_uint8(p.image)) for p in phantoms]
    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    embeddings: dict[str, list[object]] = {}
    segs["bf16"].encode(inputs[:1])  # warm-up of the bf16 kernels
    for _ in range(repeats):
        for precision, seg in segs.items():  # interleaved: drift in the machine's load hits both alike
            t0 = time.perf_counter()
            embeddings[precision] = seg.encode(inputs)
            times[precision].append((time.perf_counter() - t0) / n_images)
    ious = []
    for i, phantom in enumerate(phantoms):
        base = np.array(phantom.boxes, np.float64).reshape(-1, 4)
        boxes = np.concatenate([base] + [perturb_box(b, Jitter(), prompt_rng(0, str(i), p), 1024, 1024)
                                         for p, b in enumerate(base)])  # fmt: skip
        a = segs["fp32"].predict_boxes(embeddings["fp32"][i], boxes).masks
        b = segs["bf16"].predict_boxes(embeddings["bf16"][i], boxes).masks
        ious += [np.count_nonzero(x & y) / max(1, np.count_nonzero(x | y)) for x, y in zip(a, b, strict=True)]
    fp32, bf16 = min(times["fp32"]), min(times["bf16"])
    return [
        Measure("P8", "CPU encoder time per image bf16 / fp32 (ViT-B 1024², random weights)", bf16 / fp32,
                details=[f"fp32 {fp32:.2f} s/image, bf16 {bf16:.2f} s/image (best of {repeats}; {n_images} images, "
                         f"{torch.get_num_threads()} torch threads); load average {load_average():.2f}"]),
        Measure("P8", f"mask IoU bf16 encoder vs fp32 ({len(ious)} prompts incl. jitter)", float(np.mean(ious)),
                "IoU", goal=">=0.98", details=[f"minimum {min(ious):.4f}"]),
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--model", default="sam_vit_b", help="sam_vit_b, or a SAM 2 name (sam2.1_hiera_tiny)")
    args = parser.parse_args()
    sam2 = args.model.startswith("sam2") or args.model == "medsam2"
    measures = run_sam2(args.model, args.images, args.repeats) if sam2 else run(args.images, args.repeats)
    for measure in measures:
        measure.print()


if __name__ == "__main__":
    main()
