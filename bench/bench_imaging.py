"""Imaging benchmarks (issue 3), one core: the research's preprocessing chain on a 1024² radiograph, and
RAPMED vectorised against a plain per-pixel Python loop.

Prints ``IMG<n> <name> value=<number> unit=<unit> goal=<goal> ok=<yes|no>`` lines (plus ``#`` detail lines);
exit status 1 if a goal is missed. Run: ``python bench/bench_imaging.py [--repeat N]``.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one core, before numpy / numba load

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from pixelperfect.pipeline.preprocess.variants import parse_step, parse_variant  # noqa: E402
from pixelperfect.synthetic.phantoms import display_uint8, make_phantom  # noqa: E402

CHAIN_GOAL_MS = 50.0
RAPMED_GOAL_RATIO = 1000.0


def timed(fn: Callable[[], object], repeat: int) -> float:
    """Median wall time of ``fn`` in milliseconds over ``repeat`` calls, after one warm-up call."""
    fn()
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def rapmed_loop(image: np.ndarray) -> np.ndarray:
    """The reference: pixel + (pixel - median of its 3x3 neighbourhood, edges replicated), one pixel at a time."""
    height, width = image.shape
    rows = image.tolist()
    out = [[0] * width for _ in range(height)]
    for y in range(height):
        for x in range(width):
            window = sorted(
                rows[min(max(y + dy, 0), height - 1)][min(max(x + dx, 0), width - 1)]
                for dy in (-1, 0, 1)
                for dx in (-1, 0, 1)
            )
            out[y][x] = min(max(2 * rows[y][x] - window[4], 0), 255)
    return np.array(out, np.uint8)


def report(tag: str, name: str, value: float, unit: str, goal: str, ok: bool) -> None:
    print(f"{tag} {name} value={value:.6g} unit={unit} goal={goal} ok={'yes' if ok else 'no'}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=15, help="timed runs per measurement (median reported)")
    args = parser.parse_args()
    cv2.setNumThreads(1)
    image = display_uint8(make_phantom(0, size=1024).image)
    phantom_ms = timed(lambda: make_phantom(1, size=1024), max(3, args.repeat // 3))
    print(f"# phantom generation at 1024x1024: {phantom_ms:.1f} ms (target ~100 ms)")
    print(f"# cv2 {cv2.__version__}, numpy {np.__version__}, cv2 threads {cv2.getNumThreads()}, image 1024x1024")

    chain = parse_variant("clahe_canny_entropy")
    chain_ms = timed(lambda: chain(image), args.repeat)
    print(f"# chain spec: {chain.spec}")
    staged = image
    for step in chain.steps:
        ms = timed(lambda step=step, src=staged: step(src), args.repeat)
        print(f"#   {step.name:<12} {ms:7.2f} ms")
        staged = step(staged)
    report("IMG1", "research_chain_1024_one_core_ms", chain_ms, "ms", f"<={CHAIN_GOAL_MS:g}", chain_ms <= CHAIN_GOAL_MS)

    crop = np.ascontiguousarray(image[384:640, 384:640])
    rapmed = parse_step("rapmed(k=3)")
    start = time.perf_counter()
    reference = rapmed_loop(crop)
    loop_ms = (time.perf_counter() - start) * 1000
    if not np.array_equal(reference, rapmed(crop)):
        print("# ERROR: vectorised RAPMED differs from the per-pixel loop")
        return 1
    crop_ms = timed(lambda: rapmed(crop), args.repeat * 20)
    full_ms = timed(lambda: rapmed(image), args.repeat)
    scaled_ratio = loop_ms * (image.size / crop.size) / full_ms
    print(f"# rapmed loop on 256x256: {loop_ms:.1f} ms (x16 = {loop_ms * 16 / 1000:.1f} s at 1024x1024)")
    print(f"# rapmed vectorised: {crop_ms * 1000:.0f} us on 256x256, {full_ms:.3f} ms on 1024x1024")
    print(f"# same-crop ratio: {loop_ms / crop_ms:.0f}x")
    ok = scaled_ratio >= RAPMED_GOAL_RATIO
    report("IMG2", "rapmed_vectorised_vs_loop_ratio", scaled_ratio, "x", f">={RAPMED_GOAL_RATIO:g}", ok)

    from skimage.filters.rank import entropy as skimage_entropy
    from skimage.morphology import disk

    entropy = parse_step("entropy(radius=7)")
    ours_ms = timed(lambda: entropy(staged), args.repeat)
    skimage_ms = timed(lambda: skimage_entropy(staged, disk(7)), 2)
    print(f"# entropy r=7 on 1024x1024: {ours_ms:.1f} ms (numba kernel) vs {skimage_ms:.0f} ms (skimage)")
    return 0 if chain_ms <= CHAIN_GOAL_MS and ok else 1


if __name__ == "__main__":
    sys.exit(main())
