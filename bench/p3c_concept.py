"""P3c: what concept prompts cost (SAM 3). Per-image time, vision embedding included, through the real
``process_images`` path (preprocessing, batched vision encoder, all phrases of an image decoded together, matching,
scores, consistency, mask PNGs), on phantom radiographs, one variant (``raw``).

- ``P3c concepts 4 vs 1``: four phrases against one, K = 0. Goal <= 1.5: one vision embedding per image whatever
  the number of phrases, and the phrases decoded as one batch, so only the decoder's share grows.
- ``P3c consistency K=4 vs K=0``: one phrase, K = 4 perturbed films against none. No goal: each perturbed film is
  re-encoded (a rescaled, shifted film is another image to the vision encoder), so the cost is about ``1 + K``
  vision passes plus K decodes and the matching; the ratio states it.

Settings alternate image by image, so drift in the machine's speed hits all alike; medians per setting.

Architecture: the default ``Sam3Config`` (the facebook/sam3 detector: ViT 32 x 1024 at 1008², DETR 6 + 6 layers,
200 queries) with seeded random weights — timing only. ``--arch cpu`` (the default on a machine without CUDA) is
the same network at the ViT's pretraining size, 336² (24² patches), so that a film takes seconds, not minutes, on 2
CPU cores: the vision encoder and the per-phrase part (the DETR encoder and decoder, and the mask decoder's
prompt-conditioned pixel decoder, 3x3 convolutions at 1/4 and 1/2 of the ViT's stride-14 grid, upsampled x4
and x2) both scale with the pixels, so their ratio — what the concept ratio measures — is kept (at 1008² the ViT's
global-attention layers make the vision share larger still). The text encoder runs once per phrase and run
(cached) and is excluded after the warm-up; it is small here (memory only). At most 4 instances per phrase and
image are kept (threshold 0: random weights give every query ~0.25), the scale of a clinical finding.

Run: ``python bench/p3c_concept.py [--images 3] [--device cpu] [--arch cpu|full]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import Measure

GOAL = 1.5
PHRASES = ("lung opacity", "consolidation", "pleural effusion", "nodule")


def sam3_config(arch: str) -> Any:
    """The facebook/sam3 detector's ``Sam3Config`` (``full``) or the same at 336² (``cpu``); a small text encoder."""
    from transformers import Sam3Config

    text = {
        "model_type": "clip_text_model", "vocab_size": 49408, "hidden_size": 256, "intermediate_size": 1024,
        "projection_dim": 256, "num_hidden_layers": 2, "num_attention_heads": 4, "max_position_embeddings": 32,
    }  # fmt: skip
    if arch == "full":
        return Sam3Config(text_config=text)
    return Sam3Config(  # the real ViT (32 x 1024) at its pretraining size, 336² (24² patches), a small text encoder
        vision_config={
            "backbone_config": {"model_type": "sam3_vit_model", "image_size": 336},
            "backbone_feature_sizes": [[96, 96], [48, 48], [24, 24]],
        },
        text_config=text,
    )


def segmenter(arch: str, device: str, encoder_batch: int = 1) -> Any:
    """A ``Sam3Segmenter`` with seeded random weights and the tests' tiny CLIP tokenizer (ids are all a timing
    needs)."""
    import torch
    from transformers import Sam3Model

    from pixelperfect.pipeline.model.sam3 import Sam3Segmenter
    from pixelperfect.pipeline.model.sam3_files import build_tokenizer
    from pixelperfect.pipeline.model.weights import resolve_device
    from tests.sam3_tiny import tokenizer_files

    torch.manual_seed(0)
    dev = resolve_device(device)
    with torch.device(dev):
        model = Sam3Model(sam3_config(arch)).eval()
    return Sam3Segmenter(model, build_tokenizer(tokenizer_files()), dev, encoder_batch=encoder_batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3, help="phantoms to time per setting (after a warm-up)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--arch", choices=("cpu", "full"), default=None, help="default: full on CUDA, else cpu")
    parser.add_argument("--size", type=int, default=1024, help="phantom side in px")
    args = parser.parse_args()

    import torch

    from pixelperfect.pipeline.options import ConceptSettings, Jitter, ProcessSettings, PromptMode
    from pixelperfect.pipeline.preprocess.variants import parse_variant
    from pixelperfect.pipeline.stages import ImageInput, process_images
    from pixelperfect.synthetic.phantoms import make_phantom

    torch.set_num_threads(max(1, torch.get_num_threads()))
    seg = segmenter(args.arch or ("full" if args.device.startswith("cuda") else "cpu"), args.device)
    cuda = seg.device.type == "cuda"
    images = [ImageInput(p.id, p.image, []) for p in (make_phantom(i, seed=0, size=args.size)
                                                      for i in range(args.images + 1))]  # fmt: skip
    variants = [parse_variant("raw")]

    def settings(n: int, k: int) -> ProcessSettings:
        # threshold 0: every query is an instance, the most work the matching and scoring can see
        concept = ConceptSettings(concepts=PHRASES[:n], threshold=0.0, max_instances=4)
        return ProcessSettings(prompt_mode=PromptMode.concept, jitter=Jitter(k=k), concept=concept)

    setups = {"c1k0": settings(1, 0), "c4k0": settings(4, 0), "c1k4": settings(1, 4)}

    def timed(image: ImageInput, name: str) -> float:
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        process_images([image], variants, seg, setups[name])
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    for name in setups:  # warm-up: allocations, and every phrase's text embedding (cached for the run)
        timed(images[0], name)
    times: dict[str, list[float]] = {name: [] for name in setups}
    for i, image in enumerate(images[1:]):
        order = list(setups) if i % 2 == 0 else list(reversed(setups))
        for name in order:
            times[name].append(timed(image, name))
    med = {name: statistics.median(v) for name, v in times.items()}
    where = f"{'GPU' if cuda else 'CPU'}, arch {args.arch or ('full' if cuda else 'cpu')}, {args.images} images"
    Measure(
        "P3c",
        "concepts 4 vs 1 time per image",
        med["c4k0"] / med["c1k0"],
        goal=f"<={GOAL}",
        details=[f"1 concept {med['c1k0']:.3f} s, 4 concepts {med['c4k0']:.3f} s per image ({where})"],
    ).print()
    Measure("P3c", "consistency K=4 vs K=0 time per image", med["c1k4"] / med["c1k0"],
            details=[f"K=0 {med['c1k0']:.3f} s, K=4 {med['c1k4']:.3f} s per image: 4 more vision passes "
                     f"(perturbed films), 4 more decodes, matching ({where})"]).print()  # fmt: skip


if __name__ == "__main__":
    main()
