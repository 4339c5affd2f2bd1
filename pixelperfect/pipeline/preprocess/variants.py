"""Preprocessing steps and named variants.

A *step* is a small callable class: parameters are validated in ``__init__`` (``ValueError`` naming the bad
value) and the work happens in ``__call__``, which takes a 2-D greyscale array of any numeric dtype and returns
a 2-D ``uint8`` array (0..255) of the same shape. Steps that need 8-bit input first map it with :func:`to_uint8`
(min-max stretch; ``uint8`` passes unchanged); ``minmax`` and ``percentile`` read the full-precision values.
A *variant* is a named composition of steps written as a short spec, e.g. ``clahe(clip=2.0,tile=8)|gaussian(k=3)``;
its canonical spec (parameters sorted, defaults filled in) and the hash of that spec identify it in the database,
so two runs that used the same preprocessing can be compared.

This module holds the intensity and denoising steps, the registry :data:`STEPS`, the built-in variants and the
spec parser; the :class:`Step` base class and the edge/texture steps (``canny_blend``, ``sobel``, ``log``,
``entropy``, ``rapmed``) with their kernels live in :mod:`pixelperfect.pipeline.preprocess.steps`.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any, ClassVar

import cv2
import numpy as np

from pixelperfect.pipeline.preprocess.steps import (
    CannyBlend,
    Entropy,
    Limits,
    LoG,
    Rapmed,
    Sobel,
    Step,
    check_order,
    stretch,
    to_uint8,
)  # fmt: skip

__all__ = ["BUILTIN_VARIANTS", "STEPS", "Step", "Variant", "parse_step", "parse_value", "parse_variant", "to_uint8"]


@dataclass(frozen=True)
class Identity(Step):
    """Display values unchanged (``uint8`` conversion only)."""

    name: ClassVar[str] = "identity"

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return to_uint8(image)


@dataclass(frozen=True)
class MinMax(Step):
    """Stretch the image's own min..max to 0..255 (``uint8`` input too); a constant image maps to 0."""

    name: ClassVar[str] = "minmax"

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return to_uint8(image) if image.dtype != np.uint8 else stretch(image)


@dataclass(frozen=True)
class Percentile(Step):
    """Clip to the ``low``..``high`` percentiles of the full-precision values, then stretch to 0..255."""

    name: ClassVar[str] = "percentile"
    low: float = 1.0
    high: float = 99.0

    limits: ClassVar[Limits] = {"low": ("float", 0, 100), "high": ("float", 0, 100)}

    def __post_init__(self) -> None:
        super().__post_init__()
        check_order(self, "low", "high")

    def __call__(self, image: np.ndarray) -> np.ndarray:
        if image.ndim != 2:
            raise ValueError(f"expected a 2-D greyscale array, got shape {image.shape}")
        lo, hi = np.percentile(image, [self.low, self.high])
        return stretch(np.clip(image.astype(np.float32), lo, hi), float(lo), float(hi))


@dataclass(frozen=True)
class Clahe(Step):
    """Contrast-limited adaptive histogram equalisation (OpenCV), then a brightness offset saturating at 0/255.

    The research used clip limit 5 and +30 brightness.
    """

    name: ClassVar[str] = "clahe"
    clip: float = 2.0
    tile: int = 8
    brightness: int = 0

    limits: ClassVar[Limits] = {
        "clip": ("float>", 0, 100),
        "tile": ("int", 1, 64),
        "brightness": ("int", -255, 255),
    }

    def __call__(self, image: np.ndarray) -> np.ndarray:
        out = cv2.createCLAHE(clipLimit=self.clip, tileGridSize=(self.tile, self.tile)).apply(to_uint8(image))
        if self.brightness:
            out = np.clip(out.astype(np.int16) + self.brightness, 0, 255).astype(np.uint8)
        return out


@dataclass(frozen=True)
class Gamma(Step):
    """``255 * (x / 255) ** gamma`` through a lookup table (gamma < 1 brightens)."""

    name: ClassVar[str] = "gamma"
    gamma: float = 1.0

    limits: ClassVar[Limits] = {"gamma": ("float>", 0, 20)}

    def __call__(self, image: np.ndarray) -> np.ndarray:
        lut = np.clip((np.arange(256) / 255.0) ** self.gamma * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return cv2.LUT(to_uint8(image), lut)


@dataclass(frozen=True)
class HistEq(Step):
    """Global histogram equalisation (``cv2.equalizeHist``)."""

    name: ClassVar[str] = "hist_eq"

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return cv2.equalizeHist(to_uint8(image))


@dataclass(frozen=True)
class Gaussian(Step):
    """Gaussian blur with a ``k x k`` kernel; ``sigma`` 0 derives it from ``k`` as OpenCV does."""

    name: ClassVar[str] = "gaussian"
    k: int = 3
    sigma: float = 0.0

    limits: ClassVar[Limits] = {"k": ("odd", 1, 99), "sigma": ("float", 0, 50)}

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(to_uint8(image), (self.k, self.k), self.sigma, borderType=cv2.BORDER_REFLECT_101)


@dataclass(frozen=True)
class Median(Step):
    """Median filter over a ``k x k`` window (edges replicated)."""

    name: ClassVar[str] = "median"
    k: int = 3

    limits: ClassVar[Limits] = {"k": ("odd", 1, 99)}

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return cv2.medianBlur(to_uint8(image), self.k) if self.k > 1 else to_uint8(image).copy()


@dataclass(frozen=True)
class Bilateral(Step):
    """Edge-preserving bilateral filter: neighbourhood diameter ``d``, range and space sigmas."""

    name: ClassVar[str] = "bilateral"
    d: int = 5
    sigma_color: float = 50.0
    sigma_space: float = 50.0

    limits: ClassVar[Limits] = {
        "d": ("int", 1, 25),
        "sigma_color": ("float>", 0, 500),
        "sigma_space": ("float>", 0, 500),
    }

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return cv2.bilateralFilter(to_uint8(image), self.d, self.sigma_color, self.sigma_space)


@dataclass(frozen=True)
class NlMeans(Step):
    """Non-local-means denoising (``cv2.fastNlMeansDenoising``): strength ``h``, patch and search windows."""

    name: ClassVar[str] = "nlmeans"
    h: float = 10.0
    template: int = 7
    search: int = 21

    limits: ClassVar[Limits] = {
        "h": ("float>", 0, 100),
        "template": ("odd", 3, 21),
        "search": ("odd", 3, 51),
    }

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.search < self.template:
            raise ValueError(f"nlmeans search ({self.search!r}) must be >= template ({self.template!r})")

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return cv2.fastNlMeansDenoising(to_uint8(image), None, self.h, self.template, self.search)


@dataclass(frozen=True)
class Unsharp(Step):
    """Unsharp mask: ``x + amount * (x - gaussian_sigma(x))``, saturated to 0..255."""

    name: ClassVar[str] = "unsharp"
    sigma: float = 2.0
    amount: float = 1.0

    limits: ClassVar[Limits] = {"sigma": ("float>", 0, 50), "amount": ("float", 0, 10)}

    def __call__(self, image: np.ndarray) -> np.ndarray:
        x = to_uint8(image)
        blur = cv2.GaussianBlur(x, (0, 0), self.sigma, borderType=cv2.BORDER_REFLECT_101)
        return cv2.addWeighted(x, 1.0 + self.amount, blur, -self.amount, 0)


STEPS: dict[str, type[Step]] = {
    cls.name: cls
    for cls in (
        Identity, MinMax, Percentile, Clahe, Gamma, HistEq, Gaussian, Median, Bilateral, NlMeans, Unsharp,
        CannyBlend, Sobel, LoG, Entropy, Rapmed,
    )
}  # fmt: skip

_RESEARCH_CLAHE = "clahe(clip=5.0,tile=8,brightness=30)"
#: Built-in variants; the research's choices where it made them (CLAHE clip 5 and +30 brightness; Gaussian 3x3
#: then Canny at 0.1x/0.5x Otsu, blended 0.3 image + 0.7 edges; entropy disk radius 7; RAPMED 3x3 median).
BUILTIN_VARIANTS: dict[str, str] = {
    "raw": "identity",
    "clahe": _RESEARCH_CLAHE,
    "clahe_canny": f"{_RESEARCH_CLAHE}|canny_blend(alpha=0.3,low=0.1,high=0.5,blur=3)",
    "clahe_canny_entropy": f"{_RESEARCH_CLAHE}|canny_blend(alpha=0.3,low=0.1,high=0.5,blur=3)|entropy(radius=7)",
    "sobel": "sobel(k=3)",
    "log": "log(sigma=2.0)",
    "rapmed": "rapmed(k=3)",
}

_STEP_RE = re.compile(r"^\s*([a-z_][a-z0-9_]*)\s*(?:\((.*)\))?\s*$")
_NAME_RE = re.compile(r"^[a-z0-9_][a-z0-9_.-]{0,63}$")


def parse_value(text: str) -> Any:
    """A spec value: ``true``/``false`` -> bool, then int, then float, else the stripped text."""
    text = text.strip()
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_step(text: str) -> Step:
    """Build one step from ``name(k=v,...)``; unknown names and bad parameters raise ``ValueError``."""
    match = _STEP_RE.match(text)
    if not match:
        raise ValueError(f"cannot parse preprocessing step {text!r}")
    name, inner = match.group(1), match.group(2)
    if name not in STEPS:
        raise ValueError(f"unknown preprocessing step {name!r}; known: {', '.join(sorted(STEPS))}")
    kwargs: dict[str, Any] = {}
    if inner and inner.strip():
        for part in inner.split(","):
            if "=" not in part:
                raise ValueError(f"step {name!r}: parameter {part.strip()!r} must be written key=value")
            key, value = part.split("=", 1)
            kwargs[key.strip()] = parse_value(value)
    try:
        return STEPS[name](**kwargs)
    except TypeError as exc:
        raise ValueError(f"step {name!r}: {exc}") from None


@dataclass(frozen=True)
class Variant:
    """A named preprocessing pipeline with a canonical spec and its hash."""

    name: str
    steps: tuple[Step, ...]

    @property
    def spec(self) -> str:
        return "|".join(step.spec() for step in self.steps)

    @property
    def spec_hash(self) -> str:
        return hashlib.sha256(self.spec.encode()).hexdigest()[:16]

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        """``(H, W)`` array of any numeric dtype -> ``(H, W) uint8`` preprocessed image.

        The first step sees the full-precision pixels (so ``percentile`` can window 16-bit or DICOM values).
        """
        image = pixels
        for step in self.steps:
            image = step(image)
        return to_uint8(image)


def parse_variant(text: str) -> Variant:
    """A built-in name (``clahe``), a spec (``clahe(clip=2)|gaussian(k=3)``) or ``name=spec``."""
    text = text.strip()
    if not text:
        raise ValueError("empty variant")
    if text in BUILTIN_VARIANTS:
        name, spec = text, BUILTIN_VARIANTS[text]
    elif "=" in text.split("(", 1)[0]:
        name, spec = (part.strip() for part in text.split("=", 1))
        if not _NAME_RE.match(name):
            raise ValueError(f"variant name {name!r} must be lower-case letters, digits, '_', '.', '-'")
    else:
        name, spec = "", text
    steps = tuple(parse_step(part) for part in spec.split("|"))
    variant = Variant(name=name, steps=steps)
    if not name:
        variant = Variant(name="v_" + variant.spec_hash[:8], steps=steps)
    return variant
