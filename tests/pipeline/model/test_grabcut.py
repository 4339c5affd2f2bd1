"""GrabCut, the classical baseline behind the segmenter interface."""

from __future__ import annotations

import numpy as np

from pixelperfect.pipeline.model.grabcut import GrabCutSegmenter


def test_grabcut_baseline_segments_a_bright_square() -> None:
    img = np.full((128, 128), 30, np.uint8)
    img[40:90, 30:100] = 200
    rng = np.random.default_rng(0)
    img = np.clip(img.astype(int) + rng.integers(-10, 10, img.shape), 0, 255).astype(np.uint8)
    pred = GrabCutSegmenter().predict_boxes(img, np.array([[20.0, 30, 110, 100]]))
    truth = np.zeros_like(pred.masks[0])
    truth[40:90, 30:100] = True
    inter = (pred.masks[0] & truth).sum()
    assert 2 * inter / (pred.masks[0].sum() + truth.sum()) > 0.9
    assert np.isnan(pred.scores).all() and pred.chosen.tolist() == [GrabCutSegmenter.CUT]


def test_grabcut_cuts_opacities_in_their_own_crop() -> None:
    """Phantom opacities: grey levels inside the box also fill the rest of the radiograph. A whole-image cut
    collapsed on every one of them; the local crop keeps most, and a collapse falls back to the box, flagged."""
    from pixelperfect.synthetic.phantoms import display_uint8, make_phantom

    seg = GrabCutSegmenter()
    dices, chosen = [], []
    for i in range(6):
        phantom = make_phantom(i, seed=1, size=1024, positive_fraction=1.0)
        boxes = np.array(phantom.boxes, np.float64).reshape(-1, 4)
        pred = seg.predict_boxes(display_uint8(phantom.image), boxes)
        assert np.isnan(pred.best_scores).all()
        for box, mask, c in zip(boxes.astype(int), pred.masks, pred.chosen, strict=True):
            x1, y1, x2, y2 = box
            truth = np.zeros_like(phantom.mask)
            truth[y1:y2, x1:x2] = phantom.mask[y1:y2, x1:x2]
            dices.append(2 * np.count_nonzero(mask & truth) / (mask.sum() + truth.sum()))
            chosen.append(int(c))
            if c == GrabCutSegmenter.BOX:
                assert mask.sum() == (x2 - x1) * (y2 - y1) and mask[y1:y2, x1:x2].all()
            else:
                assert mask[y1:y2, x1:x2].sum() >= GrabCutSegmenter.MIN_KEPT * (x2 - x1) * (y2 - y1)
    assert chosen.count(GrabCutSegmenter.CUT) >= len(chosen) // 2, chosen
    assert float(np.mean(dices)) > 0.8, dices


def test_grabcut_flat_box_falls_back_to_the_box() -> None:
    img = np.full((64, 64), 100, np.uint8)
    pred = GrabCutSegmenter().predict_boxes(img, np.array([[10.0, 10, 30, 40], [5, 5, 6, 6]]))
    assert pred.chosen.tolist() == [GrabCutSegmenter.BOX, GrabCutSegmenter.BOX]
    assert pred.masks[0].sum() == 20 * 30 and pred.masks[0][10:40, 10:30].all()
    assert pred.masks[1].sum() == 1
