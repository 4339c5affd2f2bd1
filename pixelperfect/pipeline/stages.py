"""One batch of decoded images through preprocessing, the segmenter and scoring -> segment records.

No I/O here: inputs are decoded arrays, outputs are :class:`SegmentRecord` objects with mask PNG bytes, so the
worker can fetch the next batch and upload the last one while this one computes. Three stages, so a worker can
overlap them, the same for every prompt mode:

1. :func:`prepare_image` (CPU, any thread): preprocess (every variant), the segmenter's input, the prompt boxes
   and their perturbations (box mode).
2. :func:`predict_images` (the model's thread, model work only): one batched encoder call per variant, then per
   image and variant the prompts' decoder call(s) -> a :class:`Prediction` (box, point or automatic prompts).
3. :func:`finish_image` (CPU, any thread): score every prediction (:func:`score.score_prediction`) and encode
   its masks as PNG.

:func:`process_images` runs them in sequence.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from pixelperfect.pipeline.model.protocol import Prediction, Segmenter, prepare_input
from pixelperfect.pipeline.options import ProcessSettings, PromptKind, PromptMode
from pixelperfect.pipeline.output.masks import encode_mask_png
from pixelperfect.pipeline.preprocess.variants import Variant
from pixelperfect.pipeline.prompt.auto import predict_prompts
from pixelperfect.pipeline.prompt.boxes import clip_boxes, perturb_box, prompt_rng
from pixelperfect.pipeline.prompt.concept import predict_concept_images, prepare_concept_inputs
from pixelperfect.pipeline.records import ImageInput, ImageResult, PreparedImage, SegmentRecord
from pixelperfect.pipeline.score.segments import score_prediction

__all__ = [
    "ImageInput",
    "ImageResult",
    "PreparedImage",
    "ProcessSettings",
    "finish_image",
    "is_prompted",
    "predict_images",
    "prepare_image",
    "process_images",
]


def is_prompted(image: ImageInput, settings: ProcessSettings) -> bool:
    """boxes mode: the boxes are the prompts; points mode: the points; auto and concept: every image (boxes are
    truth only)."""
    mode = settings.prompt_mode
    if mode in (PromptMode.auto, PromptMode.concept):
        return True
    return bool(image.points if mode == PromptMode.points else image.boxes)


def prepare_image(
    image: ImageInput, variants: Sequence[Variant], segmenter: Segmenter, settings: ProcessSettings
) -> PreparedImage:
    """CPU work before the model: every variant of the image, the segmenter's input for each, the prompt boxes."""
    t0 = time.perf_counter()
    inputs: dict[str, Any] = {}
    if is_prompted(image, settings):
        inputs = {v.name: prepare_input(segmenter, v(image.pixels), image.full_size) for v in variants}
    boxes, n = np.zeros((0, 4)), 0
    if settings.prompt_mode == PromptMode.boxes and inputs:
        height, width = image.full_size or image.pixels.shape[:2]
        base = clip_boxes(np.asarray(image.boxes, np.float64), height, width)
        jittered = [perturb_box(b, settings.jitter, prompt_rng(settings.seed, image.key, p), height, width)
                    for p, b in enumerate(base)]  # fmt: skip
        boxes, n = np.concatenate([base, *jittered]), len(base)
    timings = {"preprocess": 0.0, "encode": 0.0, "prompts": 0.0, "post": 0.0}
    prepared = PreparedImage(image, boxes, n, inputs, timings)
    if settings.prompt_mode == PromptMode.concept:  # the K perturbed films of the consistency protocol
        prepare_concept_inputs(prepared, variants, segmenter, settings)
    timings["preprocess"] = time.perf_counter() - t0
    return prepared


def predict_images(
    prepared: Sequence[PreparedImage], variants: Sequence[Variant], segmenter: Segmenter, settings: ProcessSettings
) -> list[dict[str, Prediction]]:
    """The model stage: per variant the prompted images are encoded in one batched call, then each image's prompts
    and their K perturbations go through the decoder in one call. Returns, per image, ``{variant: Prediction}``
    (empty for an image without prompts). Adds the ``encode`` and ``prompts`` timings. Nothing is scored here.
    Concept mode: :func:`~pixelperfect.pipeline.prompt.concept.predict_concept_images`."""
    if settings.prompt_mode == PromptMode.concept:
        return predict_concept_images(prepared, variants, segmenter, settings)
    out: list[dict[str, Prediction]] = [{} for _ in prepared]
    prompted = [i for i, prep in enumerate(prepared) if prep.inputs]
    for variant in variants if prompted else ():
        t0 = time.perf_counter()
        embeddings = segmenter.encode([prepared[i].inputs[variant.name] for i in prompted])
        share = (time.perf_counter() - t0) / len(prompted)
        for i, embedding in zip(prompted, embeddings, strict=True):
            prep = prepared[i]
            t1 = time.perf_counter()
            if settings.prompt_mode == PromptMode.boxes:
                n = prep.n_prompts
                output = segmenter.predict_boxes(embedding, prep.boxes)
                out[i][variant.name] = Prediction(PromptKind.box, prep.boxes[:n], prep.boxes[n:], output)
            else:
                out[i][variant.name] = predict_prompts(prep.image, embedding, segmenter, settings)
            prep.timings["encode"] += share
            prep.timings["prompts"] += time.perf_counter() - t1
    return out


def finish_image(prepared: PreparedImage, predictions: dict[str, Prediction], settings: ProcessSettings) -> ImageResult:
    """CPU work after the model, for all variants of one image and every prompt mode: scores, consistency,
    accuracy (:func:`~pixelperfect.pipeline.score.segments.score_prediction`) and mask PNGs."""
    t0 = time.perf_counter()
    segments: list[SegmentRecord] = []
    for variant, prediction in predictions.items():
        records = score_prediction(prepared.image, variant, prediction, settings)
        for record, mask in zip(records, prediction.output.masks, strict=False):  # the n prompts' own masks
            record.mask_png = encode_mask_png(mask, settings.png_compression)
        segments.extend(records)
    prepared.timings["post"] += time.perf_counter() - t0
    return ImageResult(prepared.image.key, segments, prepared.timings)


def process_images(
    images: Sequence[ImageInput], variants: Sequence[Variant], segmenter: Segmenter, settings: ProcessSettings
) -> list[ImageResult]:
    """Segment every prompt of every image under every variant: the three stages in sequence, one
    :class:`ImageResult` per input, in order (segments in variant order, then prompt order)."""
    prepared = [prepare_image(image, variants, segmenter, settings) for image in images]
    predictions = predict_images(prepared, variants, segmenter, settings)
    return [finish_image(prep, preds, settings) for prep, preds in zip(prepared, predictions, strict=True)]
