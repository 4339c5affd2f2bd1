"""Concept consistency on hand-made instances: matching by mask IoU, a moved instance, a vanished one, synonyms,
and the image perturbations (their maps and inverses)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from pixelperfect.pipeline.model.sam3 import ConceptInstances
from pixelperfect.pipeline.options import ConceptSettings, Jitter, ProcessSettings, PromptMode
from pixelperfect.pipeline.prompt.concept import (
    concept_prediction,
    map_boxes,
    match_instances,
    perturbation_warps,
    unwarp_masks,
    warp_image,
)
from pixelperfect.pipeline.records import ImageInput, PreparedImage
from pixelperfect.pipeline.score.segments import score_prediction

H = W = 64


def _mask(x1: int, y1: int, x2: int, y2: int) -> np.ndarray:
    out = np.zeros((H, W), bool)
    out[y1:y2, x1:x2] = True
    return out


def _found(masks: list[np.ndarray], scores: list[float], phrases: list[int]) -> ConceptInstances:
    boxes = []
    for m in masks:
        xs, ys = np.nonzero(m.any(0))[0], np.nonzero(m.any(1))[0]
        boxes.append([float(xs[0]), float(ys[0]), float(xs[-1] + 1), float(ys[-1] + 1)])
    return ConceptInstances(
        np.array(masks, bool).reshape(-1, H, W),
        np.array(scores, np.float32),
        np.array(boxes, np.float64).reshape(-1, 4),
        np.full(len(masks), 0.9, np.float32),
        np.array(phrases, np.int64),
    )


class Stub:
    """A segmenter whose answers are given per embedding (an int naming the film) and phrase list."""

    def __init__(self, answers: dict[int, ConceptInstances]) -> None:
        self.answers = answers
        self.asked: list[tuple[int, list[str]]] = []

    def predict_concepts(self, embedding: int, phrases: list[str], exemplars: Any, **_: Any) -> ConceptInstances:
        self.asked.append((embedding, list(phrases)))
        return self.answers[embedding]


A, B = _mask(5, 5, 25, 25), _mask(35, 35, 55, 60)
A_MOVED = _mask(7, 5, 27, 25)  # two pixels right: IoU 18*20 / (22*20) = 0.8181...
IOU_MOVED = 360 / 440


def test_a_moved_instance_is_matched_and_a_vanished_one_counts_zero() -> None:
    settings = ProcessSettings(
        prompt_mode=PromptMode.concept, jitter=Jitter(k=2),
        concept=ConceptSettings(concepts=("opacity",), synonyms=(("shadow",),)),
    )  # fmt: skip
    answers = {
        # the original film: A and B for "opacity", A again for the synonym "shadow" (phrase index 1)
        0: _found([A, B, A], [0.8, 0.6, 0.7], [0, 0, 1]),
        1: _found([_mask(0, 0, 3, 3), A_MOVED], [0.2, 0.75], [0, 0]),  # film 1: A moved, B gone, a speck
        2: _found([B, A], [0.5, 0.9], [0, 0]),  # film 2: both, in the other order
    }
    stub = Stub(answers)
    prep = PreparedImage(ImageInput("a.png", np.zeros((H, W), np.uint8), []), np.zeros((0, 4)), 0, {}, {})
    prep.warps = np.array([[[1.0, 0, 0], [0, 1.0, 0]]] * 2)  # identity maps: the hand-made masks are in place
    prediction = concept_prediction(prep, [0, 1, 2], stub, settings)
    assert stub.asked == [(0, ["opacity", "shadow"]), (1, ["opacity"]), (2, ["opacity"])]
    assert prediction.labels == ["opacity", "opacity"]
    assert list(prediction.perturbed_counts) == [3, 3]  # 2 films + 1 synonym each
    rows = score_prediction(prep.image, "raw", prediction, settings)
    a, b = rows
    assert a.prompt == {"concept": "opacity", "box": [5.0, 5.0, 25.0, 25.0]} and a.score == pytest.approx(0.8)
    # A: matched on film 1 (moved), film 2 (same) and the synonym (same)
    assert a.consistency_iou_base == pytest.approx((IOU_MOVED + 1 + 1) / 3)
    assert a.consistency_std == pytest.approx(np.std([0.75, 0.9, 0.7]), abs=1e-6)
    # B: vanished on film 1 (IoU 0, score 0) and under the synonym (it found only A); matched on film 2
    assert b.consistency_iou_base == pytest.approx(1 / 3)
    assert b.consistency_std == pytest.approx(np.std([0.0, 0.5, 0.0]), abs=1e-6)
    assert b.perturbations[0] == [0.0, 0.0, 0.0, 0.0, 0.0]  # a vanished instance: zero box, score 0


def test_matching_is_one_to_one_and_within_a_phrase() -> None:
    base = np.stack([A, B])
    partner, iou = match_instances(base, np.array([0, 1]), np.stack([A_MOVED, B, A]), np.array([0, 0, 0]))
    assert list(partner) == [2, -1]  # A takes the exact copy; B's only overlap is of another phrase
    assert list(iou) == [1.0, 0.0]


def test_perturbations_are_seeded_small_and_invertible() -> None:
    concept = ConceptSettings(concepts=("x",), scale=0.05, shift=4)
    warps = perturbation_warps(7, "a.png", 4, H, W, concept)
    assert np.array_equal(warps, perturbation_warps(7, "a.png", 4, H, W, concept))
    assert not np.array_equal(warps, perturbation_warps(7, "b.png", 4, H, W, concept))
    assert np.all(np.abs(warps[:, 0, 0] - 1) <= 0.05) and np.all(warps[:, 0, 0] == warps[:, 1, 1])
    box = np.array([[10.0, 12.0, 30.0, 40.0]])
    for warp in warps:
        assert np.allclose(map_boxes(map_boxes(box, warp), warp, inverse=True), box)
    film = np.zeros((H, W), np.uint8)
    film[20:40, 20:40] = 255
    shifted = np.array([[1.0, 0, 3], [0, 1.0, -2]])  # a pure shift: the warped film's mask maps back exactly
    moved = warp_image(film, shifted) > 127
    assert moved[18:38, 23:43].all() and moved.sum() == 400
    assert np.array_equal(unwarp_masks(moved[None], shifted)[0], film > 127)
