"""The step base class and the edge and texture steps with their numeric kernels.

Every step maps a ``(H, W)`` greyscale array of any numeric dtype to a ``(H, W) uint8`` array (0..255); steps
that work on 8-bit values first apply :func:`to_uint8`. Parameters are validated at construction against the
class's ``limits``; a bad one raises ``ValueError`` naming the step, the parameter and the value.

The rank-entropy filter is a sliding-histogram kernel compiled with numba: exactly skimage's
``filters.rank.entropy`` with a ``disk`` footprint, ~30x faster at radius 7; without numba it falls back to skimage.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, fields
from functools import lru_cache
from typing import Any, ClassVar

import cv2
import numpy as np

_FIXED_POINT = 2.0**40  # entropy sums are kept as int64 in units of 2^-40 bit: exact telescoping, no drift
SENTINEL = 256  # padded pixels outside the image, left out of every histogram


Limits = dict[str, tuple[str, float, float]]


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Map any greyscale array to ``uint8`` display values.

    ``uint8`` passes through unchanged; every other dtype is min-max stretched to 0..255 (a constant image maps
    to 0). NaN and infinite values are rejected with ``ValueError``.
    """
    if pixels.ndim != 2:
        raise ValueError(f"expected a 2-D greyscale array, got shape {pixels.shape}")
    if pixels.dtype == np.uint8:
        return pixels
    return stretch(pixels.astype(np.float32, copy=False))


def stretch(values: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    if not np.isfinite(values).all():
        raise ValueError("image contains NaN or infinite values")
    lo = float(values.min()) if lo is None else lo
    hi = float(values.max()) if hi is None else hi
    if hi <= lo:
        return np.zeros(values.shape, np.uint8)
    scaled = (values.astype(np.float32, copy=False) - np.float32(lo)) * np.float32(255.0 / (hi - lo))
    return np.clip(scaled + 0.5, 0, 255).astype(np.uint8)


def _check(step: str, key: str, value: Any, rule: tuple[str, float, float]) -> int | float:
    """``rule``: (kind, lo, hi) with kind ``int``, ``odd`` (odd integer), ``float`` (closed) or ``float>``
    (``lo`` excluded). Returns the value as ``int``/``float`` or raises ``ValueError`` naming it."""
    kind, lo, hi = rule
    number = isinstance(value, (int, float)) and not isinstance(value, bool) and bool(np.isfinite(value))
    if kind in ("int", "odd"):
        if not number or not float(value).is_integer() or not lo <= value <= hi or (kind == "odd" and value % 2 == 0):
            what = "an odd integer" if kind == "odd" else "an integer"
            raise ValueError(f"{step} {key} must be {what} in {lo:g}..{hi:g}, got {value!r}")
        return int(value)
    if not number or not (lo < value if kind == "float>" else lo <= value) or value > hi:
        raise ValueError(
            f"{step} {key} must be a number in {'(' if kind == 'float>' else '['}{lo:g}, {hi:g}], got {value!r}"
        )
    return float(value)


class Step(ABC):
    """One preprocessing operation: validated parameters, ``(H, W)`` array in, ``(H, W) uint8`` out.

    Subclasses are frozen dataclasses; ``limits`` maps each parameter to its validation rule (see ``_check``),
    applied at construction.
    """

    name: ClassVar[str]
    limits: ClassVar[Limits] = {}

    def __post_init__(self) -> None:
        for key, rule in self.limits.items():
            object.__setattr__(self, key, _check(self.name, key, getattr(self, key), rule))

    def params(self) -> dict[str, Any]:
        """The step's full parameters (defaults included), used for the canonical spec."""
        return {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]

    @abstractmethod
    def __call__(self, image: np.ndarray) -> np.ndarray: ...

    def spec(self) -> str:
        params = self.params()
        if not params:
            return self.name
        inner = ",".join(f"{k}={_format_value(v)}" for k, v in sorted(params.items()))
        return f"{self.name}({inner})"


def check_order(step: Step, low: str, high: str) -> None:
    if getattr(step, high) <= getattr(step, low):
        raise ValueError(f"{step.name} {high} ({getattr(step, high)!r}) must be above {low} ({getattr(step, low)!r})")


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(round(value, 6))
    return str(value)


def canny_blend(image: np.ndarray, alpha: float, low: float, high: float, blur: int) -> np.ndarray:
    """``alpha * image + (1 - alpha) * edges``; edges (0/255) from Canny on the ``blur``-smoothed image with
    thresholds ``low``/``high`` times its Otsu threshold."""
    smooth = cv2.GaussianBlur(image, (blur, blur), 0) if blur > 1 else image
    otsu, _ = cv2.threshold(smooth, 0, 255, cv2.THRESH_BINARY | cv2.THRESH_OTSU)
    edges = cv2.Canny(smooth, low * otsu, high * otsu, L2gradient=True)
    return cv2.addWeighted(image, alpha, edges, 1.0 - alpha, 0)


def _to_display(magnitude: np.ndarray, gain: float) -> np.ndarray:
    """``magnitude * gain`` saturated to ``uint8``; ``gain`` 0 means 255 / max (per-image stretch). A peak
    below 1e-3 grey levels is float rounding on a flat image and gives zeros."""
    if gain == 0:
        peak = float(magnitude.max())
        gain = 255.0 / peak if peak > 1e-3 else 0.0
    return np.clip(magnitude * np.float32(gain) + 0.5, 0, 255).astype(np.uint8)


def sobel_magnitude(image: np.ndarray, k: int, scale: float) -> np.ndarray:
    """``scale * sqrt(gx² + gy²) / gain`` saturated, ``gain`` the kernel's response to a unit step; ``scale``
    0 stretches the magnitude's 0..max to 0..255."""
    gx = cv2.Sobel(image, cv2.CV_32F, 1, 0, ksize=k, borderType=cv2.BORDER_REPLICATE)
    gy = cv2.Sobel(image, cv2.CV_32F, 0, 1, ksize=k, borderType=cv2.BORDER_REPLICATE)
    deriv, smooth = cv2.getDerivKernels(1, 0, k)
    gain = float(np.clip(deriv, 0, None).sum() * smooth.sum())
    return _to_display(cv2.magnitude(gx, gy), scale / gain)


def log_magnitude(image: np.ndarray, sigma: float, scale: float) -> np.ndarray:
    """``scale * sigma² * |∇²(G_sigma * image)|`` saturated (scale-normalised Laplacian of Gaussian); ``scale``
    0 stretches 0..max to 0..255."""
    smooth = cv2.GaussianBlur(image.astype(np.float32), (0, 0), sigma, borderType=cv2.BORDER_REPLICATE)
    lap = cv2.Laplacian(smooth, cv2.CV_32F, ksize=1, borderType=cv2.BORDER_REPLICATE)
    return _to_display(np.abs(lap), scale * sigma**2)


def rapmed(image: np.ndarray, k: int) -> np.ndarray:
    """``image + (image - median_k(image))`` clipped to 0..255, vectorised."""
    out = 2 * image.astype(np.int16) - cv2.medianBlur(image, k)
    return np.clip(out, 0, 255).astype(np.uint8)


def disk_half_widths(radius: int) -> np.ndarray:
    """Half-width of each row of skimage's ``disk(radius)``: row ``dy`` spans ``|dx| <= floor(sqrt(r² - dy²))``."""
    dy = np.arange(-radius, radius + 1, dtype=np.float64)
    return np.floor(np.sqrt(radius * radius - dy * dy) + 1e-9).astype(np.int64)


def entropy_scale(radius: int) -> float:
    """Output units per bit: the largest entropy a disk of ``radius`` can hold maps to 255."""
    area = int((2 * disk_half_widths(radius) + 1).sum())
    return 255.0 / np.log2(min(256, area))


@lru_cache(maxsize=32)
def _tables(radius: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    half = disk_half_widths(radius)
    area = int((2 * half + 1).sum())
    counts = np.arange(area + 2, dtype=np.float64)
    clogc = np.zeros_like(counts)
    clogc[1:] = counts[1:] * np.log2(counts[1:])
    cumulative = np.round(clogc * _FIXED_POINT).astype(np.int64)  # F(c) = c·log2(c), fixed point
    log2n = np.zeros(area + 1)
    log2n[1:] = np.log2(np.arange(1, area + 1))
    return half, cumulative, log2n, area


def _entropy_kernel(pad, pad_width, drop, add, step, cumulative, log2n, area, unit, scale, out):  # type: ignore[no-untyped-def]
    """Slide a 257-bin histogram along each row; ``s = Σ_v F(count_v)`` is updated per changed count, so the
    entropy ``log2(n) - s / n`` costs two table look-ups per disk row and pixel. Indices are unsigned so that
    the compiled loop carries no negative-index checks."""
    height, width = out.shape
    rows = drop.shape[0]
    hist = np.zeros(SENTINEL + 1, np.int32)
    for y in range(height):
        hist[:] = 0
        s = 0
        base = np.uint64(y) * pad_width
        for k in range(rows):
            for i in range(drop[k] + 1, add[k] + 1):
                v = pad[base + np.uint64(i)]
                c = hist[v]
                s += step[c]
                hist[v] = c + 1
        for x in range(width):
            if x > 0:
                b = base + np.uint64(x)
                for k in range(rows):
                    v = pad[b + drop[k]]
                    c = np.uint64(hist[v] - 1)
                    s -= step[c]
                    hist[v] = c
                    v = pad[b + add[k]]
                    c = np.uint64(hist[v])
                    s += step[c]
                    hist[v] = c + 1
            outside = hist[SENTINEL]
            n = area - outside
            bits = log2n[n] - (s - cumulative[outside]) * unit / n
            out[y, x] = np.uint8(min(bits * scale + 0.5, 255.0))


@lru_cache(maxsize=1)
def _compiled_kernel() -> Any:
    """The numba-compiled kernel (cached on disk where the package directory or ``NUMBA_CACHE_DIR`` is
    writable), or ``None`` without numba. Compiled on first use, so importing this module stays cheap."""
    try:
        import numba
    except ImportError:  # pragma: no cover - exercised only where numba is missing
        return None
    try:
        return numba.njit(nogil=True, cache=True, boundscheck=False)(_entropy_kernel)
    except RuntimeError:  # pragma: no cover - no writable cache location: compile per process
        return numba.njit(nogil=True, boundscheck=False)(_entropy_kernel)


def rank_entropy(image: np.ndarray, radius: int) -> np.ndarray:
    """Shannon entropy (bits) of the grey levels in a disk of ``radius`` around each pixel, times
    :func:`entropy_scale` (the disk's maximum entropy -> 255), rounded to ``uint8``. Pixels outside the image
    are left out of the histogram (as in skimage)."""
    scale = entropy_scale(radius)
    kernel = _compiled_kernel()
    if kernel is None:  # pragma: no cover
        from skimage.filters.rank import entropy
        from skimage.morphology import disk

        bits = entropy(image, disk(radius))
        return np.clip(bits * scale + 0.5, 0, 255).astype(np.uint8)
    half, cumulative, log2n, area = _tables(radius)
    pad = cv2.copyMakeBorder(
        image.astype(np.uint16), radius, radius, radius + 1, radius, cv2.BORDER_CONSTANT, value=SENTINEL
    )
    pad_width = pad.shape[1]
    # the disk around output (y, x) covers, in padded row y + k, columns x + 1 + radius ± half[k]; sliding to
    # x drops the column just left of it and adds its rightmost one
    centre = np.arange(2 * radius + 1, dtype=np.int64) * pad_width + 1 + radius
    drop, add = (centre - half - 1).astype(np.uint64), (centre + half).astype(np.uint64)
    step = np.diff(cumulative)  # F(c + 1) - F(c)
    out = np.empty(image.shape, np.uint8)
    kernel(
        pad.ravel(), np.uint64(pad_width), drop, add, step, cumulative, log2n, area,
        1.0 / _FIXED_POINT, scale, out,
    )  # fmt: skip
    return out


@dataclass(frozen=True)
class CannyBlend(Step):
    """``alpha * image + (1 - alpha) * edges``: the research's 0.3·image + 0.7·edges at ``alpha=0.3``.

    Edges: Gaussian blur ``blur x blur`` (1 = none), then Canny with thresholds ``low``/``high`` times the
    blurred image's Otsu threshold (the research: 3x3, 0.1 and 0.5). Edge pixels are 255, others 0.
    """

    name: ClassVar[str] = "canny_blend"
    alpha: float = 0.3
    low: float = 0.1
    high: float = 0.5
    blur: int = 3

    limits: ClassVar[Limits] = {
        "alpha": ("float", 0, 1),
        "low": ("float", 0, 4),
        "high": ("float", 0, 4),
        "blur": ("odd", 1, 31),
    }

    def __post_init__(self) -> None:
        super().__post_init__()
        check_order(self, "low", "high")

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return canny_blend(to_uint8(image), self.alpha, self.low, self.high, self.blur)


@dataclass(frozen=True)
class Sobel(Step):
    """Sobel gradient magnitude ``sqrt(gx² + gy²)``. ``scale`` 0 (default): stretched so the image's strongest
    gradient is 255; ``scale`` > 0: a fixed gain, divided by the kernel's step gain, so a 0→255 step edge gives
    255 at ``scale=1`` whatever ``k``; saturated."""

    name: ClassVar[str] = "sobel"
    k: int = 3
    scale: float = 0.0

    limits: ClassVar[Limits] = {"k": ("odd", 1, 7), "scale": ("float", 0, 100)}

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return sobel_magnitude(to_uint8(image), self.k, self.scale)


@dataclass(frozen=True)
class LoG(Step):
    """Laplacian of Gaussian magnitude ``|∇²(G_sigma * x)|``. ``scale`` 0 (default): stretched so the image's
    strongest response is 255; ``scale`` > 0: the fixed, scale-normalised ``scale * sigma² * |∇²(G_sigma * x)|``
    (at ``scale=4`` a 0→255 step edge peaks at about 230 for sigma 2, 245 for sigma >= 4); saturated."""

    name: ClassVar[str] = "log"
    sigma: float = 2.0
    scale: float = 0.0

    limits: ClassVar[Limits] = {"sigma": ("float>", 0, 50), "scale": ("float", 0, 1000)}

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return log_magnitude(to_uint8(image), self.sigma, self.scale)


@dataclass(frozen=True)
class Entropy(Step):
    """Rank-entropy filter: Shannon entropy (bits) of the 256-level histogram in a disk of ``radius``
    (skimage's ``disk``; pixels outside the image are left out), scaled so the disk's maximum possible entropy,
    ``log2(min(256, disk area))``, maps to 255."""

    name: ClassVar[str] = "entropy"
    radius: int = 7

    limits: ClassVar[Limits] = {"radius": ("int", 1, 30)}

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return rank_entropy(to_uint8(image), self.radius)


@dataclass(frozen=True)
class Rapmed(Step):
    """RAPMED: ``x + (x - median_k(x))``, i.e. ``2x - median``, clipped to 0..255 (vectorised)."""

    name: ClassVar[str] = "rapmed"
    k: int = 3

    limits: ClassVar[Limits] = {"k": ("odd", 3, 99)}

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return rapmed(to_uint8(image), self.k)
