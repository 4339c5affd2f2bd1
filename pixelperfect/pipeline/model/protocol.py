"""What the model stage returns: the segmenter interface and its prediction types. No torch here.

A :class:`MaskPrediction` is a segmenter's raw answer for ``M`` prompts on one embedding; a :class:`Prediction`
is that answer for one image under one variant together with the prompts that produced it (box, point or
automatic), in the one layout every prompt mode shares: the ``M`` base prompts first, then ``K`` perturbed copies
of each, prompt-major. The score stage (:mod:`pixelperfect.pipeline.score.segments`) turns any of them into rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from pixelperfect.pipeline.options import PromptKind

#: segment-anything's automatic generator uses an offset of 1.0 on the mask logits for its stability score.
STABILITY_OFFSET = 1.0


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not fit the architecture."""


class MissingDependencyError(RuntimeError):
    """A model needs a package this process lacks (or has too old): ``package`` names it. Permanent for this
    worker: its images fail without retries (``retry`` after installing)."""

    def __init__(self, package: str, message: str) -> None:
        super().__init__(message)
        self.package = package


#: The prompt kinds of segment rows (``segments.prompt_kind``).
PROMPT_KINDS = tuple(k.value for k in PromptKind)


@dataclass
class MaskPrediction:
    """Masks for ``M`` prompts on an image of ``(H, W)`` pixels.

    ``masks``: ``(M, H, W)`` bool, the chosen mask per prompt (highest predicted IoU). ``scores``: ``(M, C)``
    float32 predicted IoUs of all ``C`` candidate masks (``C = 3`` for SAM; NaN where a model has none).
    ``chosen``: ``(M,)`` int index of the chosen candidate. ``stability``: ``(M,)`` float32, IoU of the chosen
    mask's logits thresholded at ``±STABILITY_OFFSET`` (NaN for models without logits).
    """

    masks: np.ndarray
    scores: np.ndarray
    chosen: np.ndarray
    stability: np.ndarray

    @property
    def best_scores(self) -> np.ndarray:
        """``(M,)`` float32: the predicted IoU of each chosen mask."""
        return self.scores[np.arange(len(self.chosen)), self.chosen]


@dataclass
class Prediction:
    """One image under one variant after the model: ``n`` prompts and ``K`` perturbations of each.

    ``kind``: one of :data:`PROMPT_KINDS`. ``prompts``: ``(n, 4)`` float64 XYXY boxes (``box``) or ``(n, 2)``
    float64 XY points (``point``, ``auto``), in the image's pixel coordinates. ``perturbed``: ``(n·K, 4|2)`` the
    jittered prompts, prompt-major. ``output``: the segmenter's masks for the ``n + n·K`` prompts in that order.

    Concept predictions (``concept``): ``prompts`` are the ``(n, 4)`` XYXY boxes the model gave its ``n``
    instances, ``labels`` the phrase of each, and ``perturbed_counts`` ``(n,)`` how many perturbed copies each has
    (K image perturbations plus one per synonym of its phrase, so it differs between phrases); ``perturbed`` and
    the masks after the first ``n`` hold, instance-major, the matched instance under each perturbation (a zero
    box, an empty mask and score 0 where it vanished). ``None``: ``K`` each, from the run's settings.
    """

    kind: PromptKind
    prompts: np.ndarray
    perturbed: np.ndarray
    output: MaskPrediction
    labels: list[str] | None = None
    perturbed_counts: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.kind not in PROMPT_KINDS:
            raise ValueError(f"prediction kind must be one of {', '.join(PROMPT_KINDS)}, not {self.kind!r}")
        self.kind = PromptKind(self.kind)

    @property
    def n_prompts(self) -> int:
        return len(self.prompts)


class Segmenter(Protocol):
    name: str

    def encode(self, images: Sequence[Any]) -> list[Any]:
        """``images``: ``(H, W) uint8`` preprocessed greyscale, or what :func:`prepare_input` made of them (the
        worker prepares images on its I/O threads). Returns one opaque embedding per image."""

    def predict_boxes(self, embedding: Any, boxes: np.ndarray) -> MaskPrediction:
        """``boxes``: ``(M, 4)`` float XYXY in the image's own pixel coordinates."""

    def predict_points(self, embedding: Any, points: np.ndarray, labels: np.ndarray) -> MaskPrediction:
        """``points``: ``(M, P, 2)`` float XY; ``labels``: ``(M, P)`` int, 1 foreground / 0 background."""


def check_options(encoder_batch: int, precision: str) -> None:
    """The options every SAM-family segmenter takes, checked once for all of them (``ValueError`` names the bad one)."""
    if encoder_batch < 1:
        raise ValueError(f"encoder_batch must be >= 1, got {encoder_batch}")
    if precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"precision must be auto, fp32 or bf16, got {precision!r}")


def empty_prediction(height: int, width: int) -> MaskPrediction:
    """No prompts: ``(0, H, W)`` masks and empty score arrays."""
    return MaskPrediction(
        np.zeros((0, height, width), bool),
        np.zeros((0, 3), np.float32),
        np.zeros(0, np.int64),
        np.zeros(0, np.float32),
    )


def prepare_input(segmenter: Any, image: np.ndarray, original_size: tuple[int, int] | None = None) -> Any:
    """The segmenter's CPU-side input for ``image`` (its ``prepare`` when it has one, else the array itself).
    ``original_size``: ``(H, W)`` of the full-resolution image when ``image`` is a reduced decode of it (only for
    segmenters with :func:`model_input_side`); prompts and masks then refer to that grid."""
    prepare = getattr(segmenter, "prepare", None)
    if prepare is None:
        return image
    return prepare(image) if original_size is None else prepare(image, original_size=original_size)


def model_input_side(segmenter: Any) -> int | None:
    """The long side the segmenter resizes every image to (SAM: its encoder's ``img_size``), or ``None`` when it
    works at the image's own resolution (GrabCut): only the former may be fed a reduced-resolution decode."""
    side = getattr(segmenter, "img_size", None)
    return int(side) if isinstance(side, int) else None
