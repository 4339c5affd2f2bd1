"""Concept prompts (SAM 3): every instance of a noun phrase, and its consistency under perturbations that do not
change the truth.

**What is perturbed, and why.** An instance of "lung opacity" is a property of the film, not of how it was framed
or worded. So the K image perturbations are small similarity transforms of the film — a rescale by ``1 + U(±scale)``
(default ±5 %) about the image centre and a shift by integers in ``±shift`` px (default ±4) — drawn per image
from the run's seed and the image key (:func:`perturbation_warps`, the same in every process and every variant),
applied to the decoded film before the variant's preprocessing (edges replicated), then encoded and decoded like
the original; their masks are mapped back to the original's pixel grid by the inverse transform. A real opacity
moves with the film and keeps its score; a detection that depends on where a rib edge falls on the model's patch
grid does not. On top of these, each user synonym of a phrase (``--concept-variants``) is one more perturbation:
the same image, the phrase reworded. Rotations, flips, intensity changes are left out: a flipped chest film is
another anatomy (heart on the right), and intensity is what the preprocessing variants already vary.

**Matching.** Under each perturbation the instances of the same phrase are matched one-to-one to the original's
by mask IoU, greedily from the best pair (:func:`match_instances`); an original instance left without a partner
of IoU > 0 *vanished*: it counts as an empty mask, IoU 0 and score 0. Each segment row then records the std of
its K (+ synonyms) scores (``consistency_std``), the mean IoU of its matched masks to its own
(``consistency_iou_base``) and their mean pairwise IoU (``consistency_iou``), the same columns as for box jitter,
computed by the same row builder (:mod:`pixelperfect.pipeline.score.segments`).

Model stage only (:func:`predict_concept_images`); the perturbed films are made on the I/O threads
(:func:`prepare_concept_inputs`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from pixelperfect.pipeline.model.protocol import MaskPrediction, Prediction, prepare_input
from pixelperfect.pipeline.options import ConceptSettings, ProcessSettings, PromptKind
from pixelperfect.pipeline.preprocess.variants import Variant
from pixelperfect.pipeline.prompt.boxes import prompt_rng
from pixelperfect.pipeline.records import PreparedImage

#: ``prompt_rng``'s prompt index for the image perturbations of concept mode (box prompts use 0, 1, ...).
_WARP_STREAM = 1 << 20


# --- perturbations ---------------------------------------------------------------------------------------------


def perturbation_warps(seed: int, key: str, k: int, height: int, width: int, concept: ConceptSettings) -> np.ndarray:
    """``(K, 2, 3)`` float64 affine maps from original to perturbed pixel coordinates: a rescale by ``1 +
    U(-scale, scale)`` about the image centre, then a shift by integers in ``±shift`` px."""
    rng = prompt_rng(seed, key, _WARP_STREAM)
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    out = np.zeros((k, 2, 3))
    for j in range(k):
        s = 1.0 + rng.uniform(-concept.scale, concept.scale)
        dx, dy = rng.integers(-concept.shift, concept.shift + 1, size=2)
        out[j] = [[s, 0.0, (1.0 - s) * cx + dx], [0.0, s, (1.0 - s) * cy + dy]]
    return out


def warp_image(pixels: np.ndarray, warp: np.ndarray) -> np.ndarray:
    """The film under ``warp`` (bilinear, edges replicated), same size and dtype."""
    height, width = pixels.shape[:2]
    src = pixels.astype(np.float32) if pixels.dtype == np.float64 else pixels
    out = cv2.warpAffine(src, warp, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return out.astype(pixels.dtype, copy=False)


def unwarp_masks(masks: np.ndarray, warp: np.ndarray) -> np.ndarray:
    """``(N, H, W)`` bool masks of a perturbed film back in the original's grid (nearest neighbour)."""
    if len(masks) == 0:
        return masks
    height, width = masks.shape[1:]
    flags = cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP
    return np.stack(
        [cv2.warpAffine(m.astype(np.uint8), warp, (width, height), flags=flags, borderValue=0) > 0 for m in masks]
    )


def map_boxes(boxes: np.ndarray, warp: np.ndarray, *, inverse: bool = False) -> np.ndarray:
    """``(N, 4)`` XYXY boxes through ``warp`` (a rescale and a shift keep boxes axis-aligned) or its inverse."""
    s, tx, ty = warp[0, 0], warp[0, 2], warp[1, 2]
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    if inverse:
        return np.stack([(b[:, 0] - tx) / s, (b[:, 1] - ty) / s, (b[:, 2] - tx) / s, (b[:, 3] - ty) / s], 1)
    return np.stack([b[:, 0] * s + tx, b[:, 1] * s + ty, b[:, 2] * s + tx, b[:, 3] * s + ty], 1)


def prepare_concept_inputs(
    prepared: PreparedImage, variants: Sequence[Variant], segmenter: Any, settings: ProcessSettings
) -> None:
    """CPU side: the K perturbed films of a prompted image under every variant (``prepared.perturbed_inputs``)
    and their maps (``prepared.warps``)."""
    k = settings.jitter.k
    if k == 0 or not prepared.inputs:
        return
    image = prepared.image
    height, width = image.pixels.shape[:2]
    warps = perturbation_warps(settings.seed, image.key, k, height, width, settings.concept)
    films = [warp_image(image.pixels, w) for w in warps]
    prepared.warps = warps
    prepared.perturbed_inputs = {v.name: [prepare_input(segmenter, v(film)) for film in films] for v in variants}


# --- matching --------------------------------------------------------------------------------------------------


def mask_ious(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(len(a), len(b))`` IoU of two stacks of bool masks (1.0 for two empty masks)."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    fa, fb = a.reshape(len(a), -1).astype(np.float32), b.reshape(len(b), -1).astype(np.float32)
    inter = fa @ fb.T
    union = fa.sum(1)[:, None] + fb.sum(1)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1.0), 1.0)


def match_instances(
    base_masks: np.ndarray, base_phrase: np.ndarray, masks: np.ndarray, phrase: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one matching of the original's instances to another set by mask IoU, within each phrase, greedily
    from the highest IoU. Returns per original instance the index of its partner (-1: vanished) and the IoU (0
    where vanished)."""
    ious = mask_ious(base_masks, masks)
    ious[np.asarray(base_phrase)[:, None] != np.asarray(phrase)[None, :]] = 0.0
    partner = np.full(len(base_masks), -1, np.int64)
    best = np.zeros(len(base_masks))
    if ious.size == 0:
        return partner, best
    order = np.argsort(-ious, axis=None, kind="stable")
    used_a, used_b = set(), set()
    for flat in order:
        i, j = divmod(int(flat), ious.shape[1])
        if ious[i, j] <= 0.0:
            break
        if i in used_a or j in used_b:
            continue
        used_a.add(i)
        used_b.add(j)
        partner[i], best[i] = j, ious[i, j]
    return partner, best


# --- the model stage -------------------------------------------------------------------------------------------


def predict_concept_images(
    prepared: Sequence[PreparedImage], variants: Sequence[Variant], segmenter: Any, settings: ProcessSettings
) -> list[dict[str, Prediction]]:
    """The model stage of concept mode: per variant, the prompted images and their perturbed films are encoded
    in batched calls (one vision embedding per film), then per image all phrases (concepts and synonyms) are
    decoded together on the original, the concepts on each perturbed film, and the instances matched. Adds the
    ``encode`` and ``prompts`` timings."""
    out: list[dict[str, Prediction]] = [{} for _ in prepared]
    prompted = [i for i, prep in enumerate(prepared) if prep.inputs]
    for variant in variants if prompted else ():
        films, owners = [], []
        for i in prompted:
            for film in [prepared[i].inputs[variant.name], *prepared[i].perturbed_inputs.get(variant.name, [])]:
                films.append(film)
                owners.append(i)
        t0 = time.perf_counter()
        embeddings = segmenter.encode(films)
        per_film = (time.perf_counter() - t0) / len(films)
        at = 0
        for i in prompted:
            prep = prepared[i]
            count = owners.count(i)
            t1 = time.perf_counter()
            out[i][variant.name] = concept_prediction(prep, embeddings[at : at + count], segmenter, settings)
            at += count
            prep.timings["encode"] += per_film * count
            prep.timings["prompts"] += time.perf_counter() - t1
    return out


def concept_prediction(
    prep: PreparedImage, embeddings: Sequence[Any], segmenter: Any, settings: ProcessSettings
) -> Prediction:
    """One image under one variant: ``embeddings[0]`` the original's, then one per perturbed film."""
    cfg = settings.concept
    image = prep.image
    exemplars = np.asarray(image.points, np.float64).reshape(-1, 5) if image.points else None
    concepts = list(cfg.concepts)
    owner = [c for c, group in enumerate(cfg.synonyms) for _ in group]  # synonym -> its concept
    phrases = concepts + [s for group in cfg.synonyms for s in group]
    kwargs = {"threshold": cfg.threshold, "max_instances": cfg.max_instances}
    found = segmenter.predict_concepts(embeddings[0], phrases, exemplars, **kwargs)
    is_base = found.phrase < len(concepts)
    base_idx = np.nonzero(is_base)[0]
    base_masks, base_phrase = found.masks[base_idx], found.phrase[base_idx]
    n = len(base_idx)
    # perturbations: (masks (n, H, W), scores (n,), boxes (n, 4)) per image warp, then per synonym for its concept
    columns: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []  # + which instances it applies to
    warps = prep.warps if prep.warps is not None else np.zeros((0, 2, 3))
    for warp, embedding in zip(warps, embeddings[1:], strict=True):
        moved = None if exemplars is None else _warp_exemplars(exemplars, warp)
        other = segmenter.predict_concepts(embedding, concepts, moved, **kwargs)
        masks = unwarp_masks(other.masks, warp)
        boxes = map_boxes(other.boxes, warp, inverse=True)
        columns.append((*_matched(base_masks, base_phrase, masks, other.phrase, other.scores, boxes), np.ones(n, bool)))
    for s, concept in enumerate(owner):
        syn = found.phrase == len(concepts) + s
        renamed = np.full(int(syn.sum()), concept, np.int64)
        applies = base_phrase == concept
        matched = _matched(base_masks, base_phrase, found.masks[syn], renamed, found.scores[syn], found.boxes[syn])
        columns.append((*matched, applies))
    counts = np.zeros(n, np.int64)
    masks_out, scores_out, boxes_out, stab_out = [], [], [], []
    for p in range(n):  # instance-major: every perturbation of instance 0, then of instance 1, ...
        for masks, scores, boxes, applies in columns:
            if applies[p]:
                counts[p] += 1
                masks_out.append(masks[p])
                scores_out.append(scores[p])
                boxes_out.append(boxes[p])
                stab_out.append(np.nan)
    height, width = base_masks.shape[1:] if n else found.masks.shape[1:]
    all_masks = np.concatenate([base_masks, np.asarray(masks_out, bool).reshape(-1, height, width)])
    all_scores = np.concatenate([found.scores[base_idx], np.asarray(scores_out, np.float32)]).astype(np.float32)
    stability = np.concatenate([found.stability[base_idx], np.asarray(stab_out, np.float32)]).astype(np.float32)
    output = MaskPrediction(all_masks, all_scores[:, None], np.zeros(len(all_scores), np.int64), stability)
    return Prediction(
        PromptKind.concept,
        found.boxes[base_idx],
        np.asarray(boxes_out, np.float64).reshape(-1, 4),
        output,
        labels=[concepts[int(c)] for c in base_phrase],
        perturbed_counts=counts,
    )


def _matched(
    base_masks: np.ndarray,
    base_phrase: np.ndarray,
    masks: np.ndarray,
    phrase: np.ndarray,
    scores: np.ndarray,
    boxes: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per original instance its partner's mask, score and box under one perturbation (empty, 0, zeros where it
    vanished)."""
    partner, _ = match_instances(base_masks, base_phrase, masks, phrase)
    hit = partner >= 0
    out_masks = np.zeros_like(base_masks)
    out_scores = np.zeros(len(base_masks), np.float32)
    out_boxes = np.zeros((len(base_masks), 4))
    out_masks[hit] = masks[partner[hit]]
    out_scores[hit] = scores[partner[hit]]
    out_boxes[hit] = boxes[partner[hit]]
    return out_masks, out_scores, out_boxes


def _warp_exemplars(exemplars: np.ndarray, warp: np.ndarray) -> np.ndarray:
    moved = exemplars.copy()
    moved[:, :4] = map_boxes(exemplars[:, :4], warp)
    return moved
