"""The records that travel between the stages of one image: input, prepared image, segment, result.

``ImageInput`` (decoded) -> ``PreparedImage`` (preprocessed, prompts drawn) -> the model's
:class:`~pixelperfect.pipeline.model.protocol.Prediction` per variant -> ``SegmentRecord`` per prompt (scored, mask
PNG-encoded) inside an ``ImageResult`` -> the store (mask objects) and the bulk writer (segment rows).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

#: A pixel spacing ``(row, col)`` in mm, None when unknown (:mod:`~pixelperfect.pipeline.decode.spacing`).
Spacing = tuple[float, float] | None


@dataclass
class ImageInput:
    """A decoded image and its prompts. ``pixels``: ``(H, W)`` display values; ``boxes``: XYXY prompts (in points
    and auto mode the ground truth); ``points``: ``[x, y, label]`` prompts of points mode, or in concept mode the
    image's exemplar boxes ``[x1, y1, x2, y2, label]`` (label 1 positive, 0 negative)."""

    key: str
    pixels: np.ndarray
    boxes: list[list[float]]
    gt_mask: np.ndarray | None = None  # (H, W) bool
    points: list[list[float]] = field(default_factory=list)
    #: (H, W) of the original when ``pixels`` is a reduced-resolution decode of it (boxes, gt_mask and masks are in
    #: the original's grid); None: ``pixels`` is the original
    full_size: tuple[int, int] | None = None
    spacing: Spacing = None  # (row, col) mm, None when unknown (see pipeline/decode/spacing.py)


@dataclass
class PreparedImage:
    """One image made ready for the model by ``prepare_image`` (on any thread).

    ``boxes``: ``(n + n·K, 4)`` float64 XYXY, the ``n`` clipped prompt boxes then the K perturbations of each, in
    prompt order (box mode; empty in points/auto mode, whose prompts are drawn with the model). ``inputs``: per
    variant name, the segmenter's input for the preprocessed image (empty for an image without prompts).
    ``timings``: seconds per stage.
    """

    image: ImageInput
    boxes: np.ndarray
    n_prompts: int
    inputs: dict[str, Any]
    timings: dict[str, float]
    #: concept mode: per variant, the segmenter's inputs of the K perturbed copies of the image, and the ``(K, 2,
    #: 3)`` affine maps (original -> perturbed pixel coordinates) that made them
    perturbed_inputs: dict[str, list[Any]] = field(default_factory=dict)
    warps: np.ndarray | None = None


@dataclass
class SegmentRecord:
    """One segment: the columns of a ``segments`` row but its ids, and its mask as PNG bytes.

    Prompts are XYXY boxes or ``[x, y]`` points in pixel coordinates; ``perturbations``: ``[*prompt, score]`` per
    jittered copy; ``mask_boxes``: XYXY boxes (exclusive ``x2, y2``) of the mask's components. Scores are float
    or ``None`` (never NaN). ``mask_key`` is set by the store stage (the URL the mask was written to);
    ``mask_png`` is dropped once it is stored.
    """

    variant: str
    prompt_index: int
    prompt_kind: str
    prompt: list[float] | dict[str, Any]  # concept: {"concept": phrase, "box": XYXY}
    score: float | None
    scores: list[float | None]
    chosen: int
    stability: float | None
    area: int
    mask_boxes: list[list[int]]
    perturbations: list[list[float | None]]
    consistency_std: float | None
    consistency_iou: float | None
    consistency_iou_base: float | None
    box_iou: float | None
    inside_box: float | None
    dice: float | None
    iou: float | None
    nsd: float | None
    hd95: float | None
    box_dice: float | None
    # unit of hd95 and of the NSD tolerance: "mm" (the image's pixel spacing was known), "px", None without truth
    surface_unit: str | None = None
    mask_png: bytes = field(default=b"", repr=False, compare=False)
    mask_key: str | None = None

    def row(self, *, run_id: int, image_id: int) -> dict[str, Any]:
        """The ``segments`` row of this record (every column but ``id``)."""
        if self.mask_key is None:
            raise ValueError(f"segment {self.variant}/{self.prompt_index} has no mask_key: store its mask first")
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "mask_png"}
        out.update(run_id=run_id, image_id=image_id)
        return out


@dataclass
class ImageResult:
    """All segments of one image (variant order, then prompt order) and its stage timings in seconds."""

    key: str
    segments: list[SegmentRecord]
    timings: dict[str, float]
