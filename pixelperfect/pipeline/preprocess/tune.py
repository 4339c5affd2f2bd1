"""Parameter search for one preprocessing step, as the research chose its Gaussian kernel and entropy radius.

Each setting of the step is applied to a sample of images and scored by the structural similarity (SSIM,
scikit-image, data range 255) of its output to the original display image — how much of the anatomy survives —
and by the change in histogram entropy (bits, 256 bins) — how much grey-level information it adds or removes.
Pure: arrays in, rows out; the CLI (:mod:`pixelperfect.cli.imaging`) reads the images.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
from skimage.metrics import structural_similarity

from pixelperfect.pipeline.preprocess.variants import STEPS, Step, to_uint8

MAX_SETTINGS = 200  # a grid larger than this is almost certainly a typo (k=3:1999:2)


def parse_param_range(text: str) -> tuple[str, list[Any]]:
    """``k=3:19:2`` (start:stop:step, stop included), ``k=3,5,7`` (a list) or ``k=3`` -> ``("k", values)``.

    Integers stay integers when start, stop and step all are; floats are rounded to 6 decimals.
    """
    if "=" not in text:
        raise ValueError(f"parameter range {text!r} must be written name=start:stop:step or name=a,b,c")
    name, _, spec = (part.strip() for part in text.partition("="))
    if not name.isidentifier():
        raise ValueError(f"bad parameter name {name!r} in {text!r}")
    try:
        if ":" in spec:
            parts = spec.split(":")
            if len(parts) != 3:
                raise ValueError
            numbers = [_number(p) for p in parts]
            start, stop, step = numbers
            if step <= 0 or stop < start:
                raise ValueError
            count = int(np.floor((stop - start) / step + 1e-9)) + 1
            values: list[Any] = [start + i * step for i in range(count)]
            if not all(isinstance(n, int) for n in numbers):
                values = [round(float(v), 6) for v in values]
        else:
            values = [_number(p) for p in spec.split(",")]
    except ValueError:
        raise ValueError(
            f"bad range {spec!r} for {name!r}: use start:stop:step with step > 0 and stop >= start, or a,b,c"
        ) from None
    if not values or len(values) > MAX_SETTINGS:
        raise ValueError(f"range {spec!r} gives {len(values)} values; 1..{MAX_SETTINGS} allowed")
    return name, values


def _number(text: str) -> int | float:
    text = text.strip()
    try:
        return int(text)
    except ValueError:
        return float(text)


def histogram_entropy(image: np.ndarray) -> float:
    """Shannon entropy in bits of the 256-bin grey-level histogram of a ``uint8`` image (0..8)."""
    counts = np.bincount(image.ravel(), minlength=256).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())


@dataclass
class TuneRow:
    """One setting's scores over the sample: means and standard deviations, and time per image."""

    params: dict[str, Any]
    spec: str
    ssim_mean: float
    ssim_std: float
    entropy_delta_mean: float
    entropy_delta_std: float
    ms_per_image: float


@dataclass
class TuneGrid:
    """The steps a grid expands to, and the settings that failed validation (with the reason)."""

    steps: list[Step]
    skipped: list[tuple[dict[str, Any], str]]


def build_grid(step: str, ranges: Sequence[tuple[str, list[Any]]], fixed: dict[str, Any] | None = None) -> TuneGrid:
    """Every combination of ``ranges`` (with ``fixed`` parameters) as a constructed step.

    An unknown step or parameter name raises ``ValueError``; combinations that fail only their cross-parameter
    checks (e.g. ``low >= high``) are skipped and listed; if none is valid, ``ValueError``.
    """
    if step not in STEPS:
        raise ValueError(f"unknown preprocessing step {step!r}; known: {', '.join(sorted(STEPS))}")
    cls = STEPS[step]
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    names = [name for name, _ in ranges] + list(fixed or {})
    for name in names:
        if name not in known:
            raise ValueError(f"step {step!r} has no parameter {name!r}; it has: {', '.join(sorted(known)) or 'none'}")
    if len(set(names)) != len(names):
        raise ValueError(f"a parameter is given twice: {names}")
    combos = list(itertools.product(*[values for _, values in ranges])) if ranges else [()]
    if len(combos) > MAX_SETTINGS:
        raise ValueError(f"{len(combos)} settings; at most {MAX_SETTINGS} per search")
    grid = TuneGrid([], [])
    for combo in combos:
        params = {**(fixed or {}), **{name: value for (name, _), value in zip(ranges, combo, strict=True)}}
        try:
            grid.steps.append(cls(**params))
        except (ValueError, TypeError) as exc:
            grid.skipped.append((params, str(exc)))
    if not grid.steps:
        raise ValueError(f"no valid setting of {step!r}: {grid.skipped[0][1]}")
    return grid


def score_steps(images: Sequence[np.ndarray], steps: Sequence[Step]) -> list[TuneRow]:
    """Score every step on every image. ``images``: ``(H, W)`` arrays of any numeric dtype (display values)."""
    if not images:
        raise ValueError("no images to score")
    originals = [to_uint8(image) for image in images]
    base_entropy = [histogram_entropy(image) for image in originals]
    rows = []
    for step in steps:
        ssims, deltas = [], []
        start = time.perf_counter()
        for original, entropy in zip(originals, base_entropy, strict=True):
            out = step(original)
            ssims.append(structural_similarity(original, out, data_range=255))
            deltas.append(histogram_entropy(out) - entropy)
        elapsed = (time.perf_counter() - start) * 1000 / len(originals)
        rows.append(
            TuneRow(
                params=step.params(),
                spec=step.spec(),
                ssim_mean=float(np.mean(ssims)),
                ssim_std=float(np.std(ssims)),
                entropy_delta_mean=float(np.mean(deltas)),
                entropy_delta_std=float(np.std(deltas)),
                ms_per_image=elapsed,
            )
        )
    return rows
