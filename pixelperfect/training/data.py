"""Training data: which images, which box prompts, which target masks, and the split by image.

Targets come either from ground-truth mask files (``--gt-masks``: one mask per image, matched by stem) or from the
masks of an earlier run whose segments were consistent under box jitter (``--targets-from-run``: pseudo-labels).
Prompts are the annotated boxes when ``--annotations`` is given (target: the mask restricted to the box, exactly
how the pipeline scores Dice) and otherwise the bounding boxes of the mask's connected components larger than
``min_area`` px (target: that component), as MedSAM derives its boxes.

Boxes are ``(P, 4)`` float64 XYXY pixels of the original image, ``x2``/``y2`` exclusive.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from segment_anything.utils.transforms import ResizeLongestSide

from pixelperfect.config import Settings
from pixelperfect.inputs.annotations import match_masks, match_to_keys, parse_annotations
from pixelperfect.inputs.sources import absolute_url, list_image_keys, open_source
from pixelperfect.pipeline.decode.reader import ImageDecodeError, decode_image
from pixelperfect.pipeline.preprocess.variants import Variant
from pixelperfect.pipeline.score.overlap import restrict_to_box
from pixelperfect.storage import ObjectNotFoundError, read_url
from pixelperfect.training.recipe import TrainConfig
from pixelperfect.training.targets import TargetSpec, TrainingDataError

log = logging.getLogger(__name__)

#: Images fetched and decoded concurrently while loading (I/O bound).
LOAD_THREADS = 8
#: SAM's mask decoder predicts masks at 1/4 of the encoder's input side.
LOW_RES_FACTOR = 4


@dataclass
class TrainImage:
    """One image ready for training.

    ``pixels``: ``(H, W) uint8`` preprocessed image (dropped once its embedding is cached, unless the encoder is
    trained). ``boxes``: ``(P, 4)`` float64 XYXY. ``low_res``: ``(P, lh, lw)`` float32 in [0, 1], each target
    area-resampled to the decoder's low-resolution frame (padding cropped off). ``full``: ``(P, H, W)`` bool
    targets at full resolution, kept for validation images only.
    """

    key: str
    sha256: str
    original_size: tuple[int, int]
    boxes: np.ndarray
    low_res: np.ndarray
    full: np.ndarray | None
    pixels: np.ndarray | None


@dataclass
class DataPlan:
    """The targets of every candidate image, split by image, and what was dropped on the way."""

    train: list[TargetSpec]
    val: list[TargetSpec]
    summary: dict[str, Any]


def low_res_shape(original_size: tuple[int, int], img_size: int) -> tuple[int, int]:
    """``(lh, lw)``: the part of the decoder's ``img_size/4`` square output that covers the image (no padding)."""
    h, w = ResizeLongestSide.get_preprocess_shape(original_size[0], original_size[1], img_size)
    return max(1, round(h / LOW_RES_FACTOR)), max(1, round(w / LOW_RES_FACTOR))


def component_prompts(mask: np.ndarray, min_area: int) -> tuple[np.ndarray, np.ndarray]:
    """Boxes ``(P, 4)`` and masks ``(P, H, W)`` of the 8-connected components larger than ``min_area`` px."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    boxes, masks = [], []
    for i in range(1, n):
        x, y, w, h, area = (int(v) for v in stats[i])
        if area > min_area:
            boxes.append([x, y, x + w, y + h])
            masks.append(labels == i)
    if not boxes:
        return np.zeros((0, 4)), np.zeros((0, *mask.shape), bool)
    return np.asarray(boxes, np.float64), np.stack(masks)


def split_by_image(specs: Sequence[TargetSpec], val_fraction: float, seed: int) -> tuple[list[TargetSpec], ...]:
    """Seeded split of whole images (all prompts of an image stay on one side); at least one image each side."""
    ordered = sorted(specs, key=lambda s: s.key)
    if len(ordered) < 2:
        raise TrainingDataError(f"need at least 2 images with targets to split train/validation, got {len(ordered)}")
    n_val = min(len(ordered) - 1, max(1, round(len(ordered) * val_fraction)))
    order = np.random.default_rng([seed, 0x5A11]).permutation(len(ordered))
    val = sorted((ordered[i] for i in order[:n_val]), key=lambda s: s.key)
    train = sorted((ordered[i] for i in order[n_val:]), key=lambda s: s.key)
    return train, val


def plan_data(config: TrainConfig, settings: Settings) -> DataPlan:
    """List the source, match targets to images and split them (no pixels are read here)."""
    source = open_source(config.source, settings.s3_endpoint_url)
    keys = list(list_image_keys(source))
    if not keys:
        raise TrainingDataError(f"no images under {config.source}")
    summary: dict[str, Any] = {"source_images": len(keys)}
    if config.targets_from_run is not None:
        from pixelperfect.training.pseudo import pseudo_label_specs

        specs, pseudo = pseudo_label_specs(config, settings, set(keys))
        summary["targets"] = {"kind": "pseudo-labels", **pseudo}
    else:
        specs = _gt_specs(config, settings, keys)
        summary["targets"] = {"kind": "ground-truth masks", "gt_masks": absolute_url(str(config.gt_masks))}
    if not specs:
        raise TrainingDataError("no image of the source has a target mask")
    train, val = split_by_image(specs, config.val_fraction, config.seed)
    summary.update(images_with_targets=len(specs), train_keys=[s.key for s in train], val_keys=[s.key for s in val])
    return DataPlan(train, val, summary)


def _gt_specs(config: TrainConfig, settings: Settings, keys: list[str]) -> list[TargetSpec]:
    mask_store = open_source(str(config.gt_masks), settings.s3_endpoint_url)
    masks = match_masks(list_image_keys(mask_store), keys)
    if not masks:
        raise TrainingDataError(f"no ground-truth mask under {config.gt_masks} matches an image stem")
    boxes: dict[str, list[list[float]]] | None = None
    if config.annotations:
        url = config.annotations if "://" in config.annotations else absolute_url(config.annotations)
        text = read_url(url, endpoint_url=settings.s3_endpoint_url).decode("utf-8-sig")
        boxes = match_to_keys(parse_annotations(text, config.annotations_format, config.annotations), keys)
    specs = []
    for key in keys:
        if key not in masks or (boxes is not None and not boxes.get(key)):
            continue  # no target, or annotated as negative: a box prompt needs a box
        specs.append(TargetSpec(key, mask_store.url_for(masks[key]), boxes.get(key) if boxes is not None else None))
    if boxes is None:
        # boxes come from the masks: read them now (small PNGs) so that the split counts only images with a
        # prompt; otherwise the negatives of a dataset would quietly shrink the validation set
        with ThreadPoolExecutor(LOAD_THREADS) as pool:
            prompted = list(pool.map(lambda spec: _has_component(spec, config, settings), specs))
        specs = [spec for spec, ok in zip(specs, prompted, strict=True) if ok]
    return specs


def _has_component(spec: TargetSpec, config: TrainConfig, settings: Settings) -> bool:
    try:
        data = read_url(str(spec.mask_url), endpoint_url=settings.s3_endpoint_url)
    except ObjectNotFoundError:
        return True  # counted as missing when loading
    mask = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        return True  # reported as a bad target when loading
    n, _, stats, _ = cv2.connectedComponentsWithStats((mask > 0).astype(np.uint8), connectivity=8)
    return bool(n > 1 and (stats[1:, cv2.CC_STAT_AREA] > config.min_area).any())


def load_images(
    specs: Sequence[TargetSpec],
    config: TrainConfig,
    settings: Settings,
    variant: Variant,
    img_size: int,
    *,
    keep_full: bool,
    skipped: dict[str, str],
    chunk: int = 32,
) -> Iterator[TrainImage]:
    """Fetch, decode, preprocess and attach targets, ``chunk`` images at a time (bounded memory).

    Images that cannot be used (missing, undecodable, a target of the wrong size, no prompt left) are left out
    and recorded in ``skipped`` as ``{key: reason}``.
    """
    source = open_source(config.source, settings.s3_endpoint_url)

    def load(spec: TargetSpec) -> TrainImage | tuple[str, str]:
        try:
            data = source.get(spec.key)
            decoded = decode_image(data, spec.key, max_pixels=settings.max_pixels)
            boxes, masks = _targets(spec, decoded.shape, config, settings)
        except ObjectNotFoundError:
            return spec.key, "missing"
        except ImageDecodeError as exc:
            return spec.key, exc.reason
        except ValueError as exc:
            log.warning("%s: %s", spec.key, exc)
            return spec.key, "bad_target"
        if len(boxes) == 0:
            return spec.key, "no_prompt"
        lh, lw = low_res_shape(decoded.shape, img_size)
        low = np.stack([cv2.resize(m.astype(np.float32), (lw, lh), interpolation=cv2.INTER_AREA) for m in masks])
        return TrainImage(
            key=spec.key,
            sha256=hashlib.sha256(data).hexdigest(),
            original_size=decoded.shape,
            boxes=boxes,
            low_res=low,
            full=masks if keep_full else None,
            pixels=variant(decoded.pixels),
        )

    with ThreadPoolExecutor(LOAD_THREADS) as pool:
        for start in range(0, len(specs), chunk):
            for result in pool.map(load, specs[start : start + chunk]):
                if isinstance(result, tuple):
                    skipped[result[0]] = result[1]
                else:
                    yield result


def _targets(
    spec: TargetSpec, shape: tuple[int, int], config: TrainConfig, settings: Settings
) -> tuple[np.ndarray, np.ndarray]:
    if spec.pseudo:
        masks = [_read_mask(url, shape, settings) for _, url in spec.pseudo]
        return np.asarray([box for box, _ in spec.pseudo], np.float64).reshape(-1, 4), np.stack(masks)
    if spec.mask_url is None:
        return np.zeros((0, 4)), np.zeros((0, *shape), bool)
    mask = _read_mask(spec.mask_url, shape, settings)
    if spec.boxes is None:
        return component_prompts(mask, config.min_area)
    boxes = np.asarray(spec.boxes, np.float64).reshape(-1, 4)
    return boxes, np.stack([restrict_to_box(mask, box) for box in boxes])


def _read_mask(url: str, shape: tuple[int, int], settings: Settings) -> np.ndarray:
    data = read_url(url, endpoint_url=settings.s3_endpoint_url)
    mask = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise ValueError(f"target mask {url} does not decode as an image")
    if mask.shape != shape:
        raise ValueError(f"target mask {url} is {mask.shape[1]}x{mask.shape[0]}, image is {shape[1]}x{shape[0]}")
    return np.asarray(mask > 0)


def jitter_boxes(boxes: np.ndarray, shift: int, rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """Move every side of every ``(P, 4)`` XYXY box outward by an integer in ``0..shift`` px, clipped to the image."""
    if shift == 0:
        return boxes.copy()
    delta = rng.integers(0, shift + 1, size=boxes.shape).astype(np.float64)
    out = boxes + delta * np.array([-1.0, -1.0, 1.0, 1.0])
    height, width = size
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, width)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, height)
    return out
