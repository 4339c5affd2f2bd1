"""SAM 3 concept prompts on a seeded random-weights Sam3Model: our batched pipeline against the library's own
single-image processor + model, the text and vision work counted, the files and phrases checked."""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterator

import cv2
import numpy as np
import pytest

from pixelperfect.pipeline.model.sam3_files import (
    ConceptError,
    Sam3FilesError,
    build_tokenizer,
    check_names,
    check_phrase,
    detector_config,
    weights_sha256,
)
from pixelperfect.pipeline.options import ConceptSettings, Jitter, ProcessSettings, PromptMode
from pixelperfect.pipeline.preprocess.variants import parse_variant
from pixelperfect.pipeline.records import ImageInput
from tests.sam3_tiny import tiny_files

CONCEPTS = ("lung opacity", "consolidation")
#: scores and box coordinates (in [0, 1] of the image, so 1e-4 of its side in pixels) may differ by float32
#: rounding between a batch of phrases and images and one at a time; a larger gap is another computation
TOL = 1e-4


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Iterator[None]:
    """One intra-op thread: on 2 shared cores two spinning threads make each small forward pass ~50x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def files() -> dict[str, bytes]:
    return tiny_files(0)


@pytest.fixture()
def segmenter(files: dict[str, bytes]):  # type: ignore[no-untyped-def]
    from pixelperfect.pipeline.model.sam3 import build_sam3

    return build_sam3(files, "cpu", encoder_batch=2)


def _images(n: int) -> list[ImageInput]:
    rng = np.random.default_rng(5)
    sizes = [(120, 128), (128, 112), (96, 96), (112, 128), (128, 128)]
    return [ImageInput(f"im{i}.png", (rng.random(sizes[i % len(sizes)]) * 255).astype(np.uint8), []) for i in range(n)]


def _settings(k: int = 0, threshold: float = 0.2, synonyms: tuple = ()) -> ProcessSettings:  # type: ignore[type-arg]
    return ProcessSettings(
        prompt_mode=PromptMode.concept,
        jitter=Jitter(k=k),
        concept=ConceptSettings(concepts=CONCEPTS, synonyms=synonyms, threshold=threshold),
    )


def _library(segmenter, image: np.ndarray, phrase: str, threshold: float, exemplars=None):  # type: ignore[no-untyped-def]
    """The library's own path for one image and one phrase: Sam3Processor, Sam3Model, its post-processing."""
    import torch
    from transformers import Sam3Processor

    processor = Sam3Processor(image_processor=segmenter.processor, tokenizer=segmenter.tokenizer)
    rgb = np.repeat(image[:, :, None], 3, axis=2)
    extra = {}
    if exemplars is not None:
        extra = {"input_boxes": [[list(map(float, e[:4])) for e in exemplars]],
                 "input_boxes_labels": [[int(e[4]) for e in exemplars]]}  # fmt: skip
    inputs = processor(images=rgb, text=phrase, return_tensors="pt", **extra)
    with torch.inference_mode():
        out = segmenter.model(**{k: v for k, v in inputs.items() if k != "original_sizes"})
    (res,) = processor.post_process_instance_segmentation(
        out, threshold=threshold, mask_threshold=0.5, target_sizes=[image.shape[:2]]
    )
    order = torch.argsort(res["scores"], descending=True, stable=True)
    return res["scores"][order].numpy(), res["boxes"][order].numpy(), res["masks"][order].numpy().astype(bool)


def test_rows_equal_the_library_single_image_path(segmenter) -> None:  # type: ignore[no-untyped-def]
    from pixelperfect.pipeline.stages import process_images

    images = _images(3)
    results = process_images(images, [parse_variant("raw")], segmenter, _settings(threshold=0.2))
    compared = 0
    for image, result in zip(images, results, strict=True):
        height, width = image.pixels.shape
        for phrase in CONCEPTS:
            rows = [s for s in result.segments if s.prompt["concept"] == phrase]  # type: ignore[index]
            scores, boxes, masks = _library(segmenter, image.pixels, phrase, 0.2)
            assert len(rows) == len(scores)
            for row, score, box, mask in zip(rows, scores, boxes, masks, strict=True):
                assert row.prompt_kind == "concept"
                assert row.score == pytest.approx(float(score), abs=TOL)
                assert np.allclose(row.prompt["box"], box, atol=TOL * max(height, width))  # type: ignore[index]
                ours = cv2.imdecode(np.frombuffer(row.mask_png, np.uint8), cv2.IMREAD_UNCHANGED) > 0
                # bilinear resize of the same probabilities: only pixels within float rounding of 0.5 may differ
                assert np.count_nonzero(ours != mask) <= 1e-3 * mask.size
                compared += 1
    assert compared >= 6  # the threshold keeps instances on every image: the comparison is not vacuous
    assert segmenter.vision_images == 3 and segmenter.vision_calls == 2  # K = 0: once per image, batches of 2
    assert segmenter.text_calls == 1 and segmenter.decode_calls == 3  # both phrases of an image in one pass


def test_exemplar_boxes_match_the_library(segmenter) -> None:  # type: ignore[no-untyped-def]
    image = _images(1)[0]
    exemplars = np.array([[15.0, 20.0, 60.0, 75.0, 1.0], [75.0, 10.0, 110.0, 45.0, 0.0]])
    (emb,) = segmenter.encode([segmenter.prepare(image.pixels)])
    ours = segmenter.predict_concepts(emb, [CONCEPTS[0]], exemplars, threshold=0.2)
    plain = segmenter.predict_concepts(emb, [CONCEPTS[0]], None, threshold=0.2)
    scores, boxes, _ = _library(segmenter, image.pixels, CONCEPTS[0], 0.2, exemplars)
    assert np.allclose(ours.scores, scores, atol=TOL) and np.allclose(ours.boxes, boxes, atol=TOL * 128)
    assert len(ours) != len(plain) or not np.allclose(ours.scores, plain.scores, atol=TOL)  # the boxes count


def test_text_once_per_run_vision_once_per_film(segmenter) -> None:  # type: ignore[no-untyped-def]
    from pixelperfect.pipeline.stages import process_images

    settings = _settings(k=2, synonyms=(("opacity",), ()))
    variants = [parse_variant("raw")]
    first = process_images(_images(3), variants, segmenter, settings)
    second = process_images(_images(2), variants, segmenter, settings)
    assert segmenter.text_calls == 1 and segmenter.text_phrases == 3  # 2 concepts + 1 synonym, one call
    assert segmenter.vision_images == 5 * (1 + 2)  # each image and each of its K perturbed films, once
    assert segmenter.vision_calls == 5 + 3  # batched: 9 films in groups of 2, then 6
    assert segmenter.decode_calls == 5 * (1 + 2)  # all phrases of one film decoded together
    rows = [s for r in first + second for s in r.segments]
    assert rows
    for row in rows:  # K image perturbations, plus the synonym for "lung opacity"
        assert len(row.perturbations) == 2 + (row.prompt["concept"] == "lung opacity")  # type: ignore[index]
        assert row.consistency_iou_base is not None and 0.0 <= row.consistency_iou_base <= 1.0


def test_an_image_without_instances_has_no_rows(segmenter) -> None:  # type: ignore[no-untyped-def]
    from pixelperfect.pipeline.stages import process_images

    (result,) = process_images(_images(1), [parse_variant("raw")], segmenter, _settings(k=1, threshold=0.99))
    assert result.segments == []


def test_box_and_point_prompts_are_refused(segmenter) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(NotImplementedError, match="concept"):
        segmenter.predict_boxes(None, np.zeros((1, 4)))


def test_files_and_phrases_are_checked(files: dict[str, bytes]) -> None:
    tokenizer = build_tokenizer(files)
    assert check_phrase(tokenizer, "  lung opacity ") == "lung opacity"
    with pytest.raises(ConceptError, match="empty"):
        check_phrase(tokenizer, "   ")
    with pytest.raises(ConceptError, match="at most 32"):
        check_phrase(tokenizer, " ".join("abcdefghijklmnopqrstuvwxyzabcdef"))  # 32 words + start and end
    with pytest.raises(Sam3FilesError, match=r"merges\.txt"):
        check_names({k: v for k, v in files.items() if k != "merges.txt"})
    config = json.loads(files["config.json"])
    config.pop("text_config")
    with pytest.raises(Sam3FilesError, match="no text encoder"):
        detector_config(json.dumps(config).encode())
    with pytest.raises(Sam3FilesError, match="not SAM 3"):
        detector_config(json.dumps({"model_type": "sam2"}).encode())
    video = {"model_type": "sam3_video", "detector_config": json.loads(files["config.json"])}
    assert detector_config(json.dumps(video).encode())["text_config"]
    other = dict(files, **{"model.safetensors": files["model.safetensors"][:-1] + b" "})
    assert weights_sha256(other) != weights_sha256(files)
    assert weights_sha256(dict(files, **{"vocab.json": b"{}"})) == weights_sha256(files)  # weights only
    digest = hashlib.sha256(b"model.safetensors\0" + struct.pack("<Q", 3) + b"abc")  # the SAM 2 directories' formula
    assert weights_sha256({"model.safetensors": b"abc", "merges.txt": b""}) == digest.hexdigest()
