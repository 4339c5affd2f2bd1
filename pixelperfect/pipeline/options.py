"""Run-level settings of the pure pipeline: the prompt mode, the jitter of the consistency protocol, the automatic
mode's thresholds, scoring parameters.

Stored with the run (``runs.settings``), so every worker scores a run the same way.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

from pixelperfect.config import MIN_AREA


class _Named(str, Enum):
    """A stored vocabulary: members compare equal to their strings, and each member's name is its stored value
    (so a driver that writes an enum by its name, as psycopg does, writes the same string)."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)


class PromptKind(_Named):
    """What prompted one segment (``segments.prompt_kind``) or an annotation row (``annotations.kind``)."""

    box = "box"
    point = "point"
    auto = "auto"  # a point of the automatic grid
    concept = "concept"  # an instance SAM 3 found for a noun phrase (pipeline/prompt/concept.py)


class PromptMode(_Named):
    """A run's prompts (``runs.prompt_mode``): ground-truth ``boxes``, user ``points``, the ``auto`` grid or SAM 3
    ``concept`` phrases."""

    boxes = "boxes"
    points = "points"
    auto = "auto"
    concept = "concept"

    @property
    def kind(self) -> PromptKind:
        """The kind of the prompts this mode draws."""
        kinds = {PromptMode.boxes: PromptKind.box, PromptMode.points: PromptKind.point}
        return kinds.get(self, PromptKind.concept if self == PromptMode.concept else PromptKind.auto)


PROMPT_MODES = tuple(m.value for m in PromptMode)


@dataclass(frozen=True)
class Jitter:
    """K perturbed boxes per prompt: centre shifted by integers in ``±shift`` px, size scaled by ``1 ± U(scale)``.

    The research used K = 4, ±5 px and 0.1.
    """

    k: int = 4
    shift: int = 5
    scale: float = 0.1

    def __post_init__(self) -> None:
        if not 0 <= self.k <= 64:
            raise ValueError(f"consistency K must be in 0..64, got {self.k}")
        if not 0 <= self.shift <= 100:
            raise ValueError(f"jitter shift must be in 0..100 px, got {self.shift}")
        if not 0 <= self.scale < 1:
            raise ValueError(f"jitter scale must be in [0, 1), got {self.scale}")


@dataclass(frozen=True)
class AutoSettings:
    """Automatic-mode parameters (stored with the run).

    Thresholds are segment-anything's generator defaults (``pred_iou_thresh=0.88``,
    ``stability_score_thresh=0.95``, ``box_nms_thresh=0.7``); the grid is 16 per side instead of 32 because
    lesions in a chest film are large and each point costs a decoder pass.
    """

    points_per_side: int = 16
    points_batch: int = 64  # prompts per decoder call: 64 x H x W float32 logits (256 MiB at 1024^2)
    min_score: float = 0.88
    min_stability: float = 0.95
    nms_iou: float = 0.7
    lung_only: bool = True
    lung_fraction: float = 0.5  # a kept mask has at least this fraction of its area in the lung field
    max_masks: int = 32

    def __post_init__(self) -> None:
        if not 1 <= self.points_per_side <= 128:
            raise ValueError(f"points_per_side must be in 1..128, got {self.points_per_side}")
        if not 1 <= self.points_batch <= 4096:
            raise ValueError(f"points_batch must be in 1..4096, got {self.points_batch}")
        for name in ("min_score", "min_stability", "nms_iou", "lung_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"auto {name} must be in [0, 1], got {value}")
        if self.max_masks < 1:
            raise ValueError(f"auto max_masks must be >= 1, got {self.max_masks}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> AutoSettings:
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in (values or {}).items() if k in known})


#: SAM 3's text encoder reads at most this many tokens, start and end tokens included (``Sam3Processor``'s
#: ``max_length``); a longer phrase is refused at submit rather than cut.
CONCEPT_MAX_TOKENS = 32


@dataclass(frozen=True)
class ConceptSettings:
    """Concept-mode parameters (stored with the run; :mod:`pixelperfect.pipeline.prompt.concept`).

    ``concepts``: the noun phrases, each segmented on every image. ``synonyms``: per phrase, the user's
    ``--concept-variants``, each one more perturbation of that phrase (same image, other words). ``threshold``:
    an instance is kept when its presence-aware score (``sigmoid(logit) * sigmoid(presence)``) exceeds it (SAM 3's
    processor default 0.3, low enough for the report's threshold sweep to choose a higher one). ``max_instances``:
    per phrase and image, best first. ``scale`` / ``shift``: the K image perturbations of the consistency
    protocol, a rescale by ``1 ± U(scale)`` about the image centre and a shift by integers in ``±shift`` px.
    """

    concepts: tuple[str, ...] = ()
    synonyms: tuple[tuple[str, ...], ...] = ()
    threshold: float = 0.3
    max_instances: int = 32
    scale: float = 0.05
    shift: int = 4

    def __post_init__(self) -> None:
        object.__setattr__(self, "concepts", tuple(self.concepts))
        syn = tuple(tuple(s) for s in self.synonyms) or tuple(() for _ in self.concepts)
        object.__setattr__(self, "synonyms", syn)
        if len(self.synonyms) != len(self.concepts):
            raise ValueError(f"{len(self.synonyms)} synonym lists for {len(self.concepts)} concepts")
        if len(set(self.concepts)) != len(self.concepts):
            raise ValueError(f"a concept is given twice: {', '.join(self.concepts)}")
        if not 0.0 <= self.threshold < 1.0:
            raise ValueError(f"concept threshold must be in [0, 1), got {self.threshold}")
        if not 1 <= self.max_instances <= 200:
            raise ValueError(f"concept max_instances must be in 1..200, got {self.max_instances}")
        if not 0.0 <= self.scale < 0.5:
            raise ValueError(f"concept perturbation scale must be in [0, 0.5), got {self.scale}")
        if not 0 <= self.shift <= 100:
            raise ValueError(f"concept perturbation shift must be in 0..100 px, got {self.shift}")

    def phrases(self) -> list[str]:
        """Every phrase the text encoder sees: the concepts, then their synonyms."""
        return [*self.concepts, *(s for group in self.synonyms for s in group)]

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["concepts"], out["synonyms"] = list(self.concepts), [list(s) for s in self.synonyms]
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> ConceptSettings:
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in (values or {}).items() if k in known})


@dataclass(frozen=True)
class ProcessSettings:
    """Run-level scoring settings (stored with the run)."""

    jitter: Jitter = field(default_factory=Jitter)
    min_area: int = MIN_AREA
    seed: int = 0
    png_compression: int = 1  # zlib level: 1 is ~4x faster than 6 on masks and only a few % larger
    prompt_mode: PromptMode = PromptMode.boxes  # the run's prompt_mode column (see pipeline/prompt/auto.py)
    nsd_tolerance: float = 2.0  # px: NSD tolerance where an image's pixel spacing is unknown
    # mm: NSD tolerance where the spacing is known (pipeline/decode/spacing.py); None: pixels always (runs before 0004)
    nsd_tolerance_mm: float | None = 2.0
    pixel_spacing: tuple[float, float] | None = None  # (row, col) mm for images that carry none (--pixel-spacing)
    auto: AutoSettings = field(default_factory=AutoSettings)
    concept: ConceptSettings = field(default_factory=ConceptSettings)

    def __post_init__(self) -> None:
        if self.prompt_mode not in PROMPT_MODES:
            raise ValueError(f"prompt mode must be one of {', '.join(PROMPT_MODES)}, not {self.prompt_mode!r}")
        object.__setattr__(self, "prompt_mode", PromptMode(self.prompt_mode))  # a stored string becomes the enum
        if not 0 <= self.nsd_tolerance <= 1000:
            raise ValueError(f"NSD tolerance must be in 0..1000 px, got {self.nsd_tolerance}")
        if self.nsd_tolerance_mm is not None and not 0 <= self.nsd_tolerance_mm <= 1000:
            raise ValueError(f"NSD tolerance must be in 0..1000 mm, got {self.nsd_tolerance_mm}")

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "consistency_k": self.jitter.k,
            "jitter_shift": self.jitter.shift,
            "jitter_scale": self.jitter.scale,
            "min_area": self.min_area,
            "seed": self.seed,
            "nsd_tolerance": self.nsd_tolerance,
            "nsd_tolerance_mm": self.nsd_tolerance_mm,
        }
        if self.pixel_spacing is not None:
            out["pixel_spacing"] = list(self.pixel_spacing)
        if self.prompt_mode == PromptMode.auto:
            out["auto"] = self.auto.as_dict()
        if self.prompt_mode == PromptMode.concept:
            out["concept"] = self.concept.as_dict()
        return out
