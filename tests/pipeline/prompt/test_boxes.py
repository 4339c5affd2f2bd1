"""Box prompts: XYWH to XYXY once, and the seeded perturbations of the consistency protocol."""

from __future__ import annotations

import numpy as np

from pixelperfect.pipeline.options import Jitter
from pixelperfect.pipeline.prompt.boxes import perturb_box, prompt_rng, xywh_to_xyxy


def test_perturbations_are_seeded_and_bounded() -> None:
    jitter = Jitter(k=4, shift=5, scale=0.1)
    box = np.array([100.0, 100.0, 200.0, 160.0])
    a = perturb_box(box, jitter, prompt_rng(0, "img.png", 1), 512, 512)
    b = perturb_box(box, jitter, prompt_rng(0, "img.png", 1), 512, 512)
    c = perturb_box(box, jitter, prompt_rng(0, "img.png", 2), 512, 512)
    assert a.shape == (4, 4) and np.array_equal(a, b) and not np.array_equal(a, c)
    centres = (a[:, :2] + a[:, 2:]) / 2
    assert (np.abs(centres - [150, 130]) <= 5.5).all()
    widths = a[:, 2] - a[:, 0]
    assert ((widths >= 100 * 0.9 - 1) & (widths <= 100 * 1.1 + 1)).all()
    edge = perturb_box(np.array([0.0, 0, 20, 20]), jitter, prompt_rng(1, "k", 0), 30, 30)
    assert (edge >= 0).all() and (edge <= 30).all()


def test_xywh_to_xyxy() -> None:
    assert xywh_to_xyxy(264, 152, 213, 379) == [264, 152, 477, 531]
