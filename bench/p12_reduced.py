"""P12: decoding only the resolution the model needs. Per compressed syntax, our decode for the model's input size
(``model_side``; 1024 for SAM) ÷ our full decode, both with VOI and rescale (goal <= 0.3 for JPEG 2000 of
2048 px or more; other syntaxes are reported without a goal: JPEG 2000 resolution levels and JPEG DCT scaling are
the only reductions, and 8-bit JPEG at 1024² needs none for SAM). A second line per kind gives sam_tiny's 256.

With ``--dice`` (default on) it also checks that the reduction changes nothing the model sees: masks of a
``sam_tiny`` built at SAM's 1024 input, random weights, on 2800x2300 JPEG 2000 phantoms (lossless, and lossy with
three quality layers of which level 1 reads one) decoded at resolution level 1 against the full decode (mean Dice,
goal >= 0.98), and the change of their Dice against the phantoms' exact masks (goal: a drop of at most 0.01).

Run: ``python bench/p12_reduced.py [--images 2] [--repeats 5] [--no-dice]``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("NUMBA_NUM_THREADS", "1")

import argparse
import time

import common  # noqa: F401  (puts the checkout on sys.path)
import cv2
import numpy as np
from common import Measure

from pixelperfect.pipeline.decode import codecs
from pixelperfect.pipeline.decode.reader import decode_image
from pixelperfect.synthetic.archive_phantoms import ARCHIVE_KINDS, archive_phantom, encoder_missing

cv2.setNumThreads(1)
SAM_SIDE = 1024
TINY_SIDE = 256


def best_ms(data: bytes, side: int | None, repeats: int) -> tuple[float, tuple[int, int]]:
    times, shape = [], (0, 0)
    for _ in range(repeats):
        t0 = time.perf_counter()
        shape = decode_image(data, "k.dcm", model_side=side).shape
        times.append(time.perf_counter() - t0)
    return 1000 * min(times), shape


def timing(kind: str, images: int, repeats: int) -> list[Measure]:
    spec = ARCHIVE_KINDS[kind]
    if encoder_missing(spec):
        print(f"# P12 {kind}: skipped, its encoder needs {encoder_missing(spec)}", flush=True)
        return []
    files = [archive_phantom(kind, index)[0] for index in range(images)]
    for data in files:
        decode_image(data, "k.dcm", model_side=TINY_SIDE)  # warm
    full = [best_ms(data, None, repeats)[0] for data in files]
    out = []
    rows, cols = spec.shape
    for side in (SAM_SIDE, TINY_SIDE):
        reduced = [best_ms(data, side, repeats) for data in files]
        ratio = float(np.mean([r[0] for r in reduced]) / np.mean(full))
        big_j2k = spec.syntax in codecs.J2K_SYNTAXES and max(rows, cols) >= 2048
        goal = "<=0.3" if big_j2k and side == SAM_SIDE else ""
        shape = reduced[0][1]
        detail = (f"model side {side}: decoded {shape[1]}x{shape[0]} in {np.mean([r[0] for r in reduced]):.1f} ms, "
                  f"full {cols}x{rows} in {np.mean(full):.1f} ms")  # fmt: skip
        what = f"{kind} {cols}x{rows} decode for a {side} px model / full decode"
        out.append(Measure("P12", what, ratio, goal=goal, details=[detail]))
    return out


def dice_agreement(images: int) -> list[Measure]:
    """Masks from the reduced vs the full decode through a 1024-input sam_tiny (see the module docstring), for the
    lossless and the lossy JPEG 2000 kind."""
    import torch

    from pixelperfect.pipeline.model.sam import SamSegmenter
    from pixelperfect.pipeline.model.weights import TinyConfig, build_tiny_sam
    from pixelperfect.pipeline.options import Jitter
    from pixelperfect.pipeline.preprocess.variants import parse_variant
    from pixelperfect.pipeline.score.overlap import dice
    from pixelperfect.pipeline.stages import ImageInput, ProcessSettings, process_images

    torch.manual_seed(0)
    segmenter = SamSegmenter(build_tiny_sam(TinyConfig(image_size=SAM_SIDE)), torch.device("cpu"), name="sam_tiny")
    variants = [parse_variant("raw"), parse_variant("clahe")]
    settings = ProcessSettings(jitter=Jitter(k=0))
    out = []
    for kind in ("j2k_lossless", "j2k_lossy"):
        if encoder_missing(ARCHIVE_KINDS[kind]):
            continue
        agreement, truth_full, truth_reduced = [], [], []
        for index in range(images):
            data, phantom = archive_phantom(kind, index, seed=5)
            if not phantom.boxes:
                continue
            boxes = [list(map(float, b)) for b in phantom.boxes]
            full = decode_image(data, "f.dcm")
            small = decode_image(data, "f.dcm", model_side=SAM_SIDE)
            inputs = [
                ImageInput("f", full.pixels, boxes, gt_mask=phantom.mask),
                ImageInput("f", small.pixels, boxes, gt_mask=phantom.mask, full_size=small.full_shape),
            ]
            a, b = (process_images([image], variants, segmenter, settings)[0] for image in inputs)
            for sa, sb in zip(a.segments, b.segments, strict=True):
                masks = [cv2.imdecode(np.frombuffer(s.mask_png, np.uint8), cv2.IMREAD_GRAYSCALE) > 0
                         for s in (sa, sb)]  # fmt: skip
                agreement.append(dice(*masks))
                truth_full.append(sa.dice)
                truth_reduced.append(sb.dice)
        drop = float(np.mean(truth_full) - np.mean(truth_reduced))
        out += [
            Measure("P12", f"{kind} 2800x2300 masks reduced vs full decode, mean Dice", float(np.mean(agreement)),
                    "Dice", goal=">=0.98", details=[f"{len(agreement)} masks, min {np.min(agreement):.4f}; sam_tiny "
                                                     "at 1024 px input, random weights, variants raw and clahe"]),
            Measure("P12", f"{kind} Dice vs ground truth, full minus reduced decode", drop, "Dice",
                    goal="<=0.01", details=[f"full {np.mean(truth_full):.4f}, reduced {np.mean(truth_reduced):.4f}"]),
        ]  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--kinds", default="j2k_lossless,j2k_lossy,jpeg_baseline,jpeg_lossless_sv1,jpeg_ls,rle")
    parser.add_argument("--dice", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()
    for kind in [k.strip() for k in args.kinds.split(",") if k.strip()]:
        for result in timing(kind, args.images, args.repeats):
            result.print()
    if args.dice:
        for result in dice_agreement(args.images):
            result.print()


if __name__ == "__main__":
    main()
