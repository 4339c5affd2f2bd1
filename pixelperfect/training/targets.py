"""What a training image's targets are made of, shared by the data loader and the pseudo-label reader."""

from __future__ import annotations

from dataclasses import dataclass, field


class TrainingDataError(ValueError):
    """No usable training data (nothing matched, every target filtered out, too few images to split)."""


@dataclass
class TargetSpec:
    """Where the targets of one image come from: a mask URL (and optional annotated boxes), or pseudo-labels."""

    key: str
    mask_url: str | None = None
    boxes: list[list[float]] | None = None  # annotated prompts (XYXY); None = boxes from mask components
    pseudo: list[tuple[list[float], str]] = field(default_factory=list)  # (box, mask URL) per kept segment
