"""SAM 2 through transformers, oracle-exact: every stored multimask score, perturbation score and consistency std
of a PixelPerfect run equals what transformers' own ``Sam2Processor`` + ``Sam2Model`` give for that image and
that single prompt (box or point), within 1e-4 — a float32 sum's reordering between a batched and a one-prompt
forward, far below the 1e-3 a coordinate off by one pixel moves a score (asserted below, so the tolerance can
tell a wrong transform apart). Seeded random weights (``seeded_sam2``): transformers' own initialiser gives every
box the same scores."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch

from pixelperfect.config import SAM2_MODEL_NAMES
from pixelperfect.pipeline.model.builder import build_segmenter, dependency_problem
from pixelperfect.pipeline.model.hf_checkpoint import (
    check_sam2_checkpoint,
    read_hf_checkpoint,
    safetensors_header,
    weights_sha256,
)
from pixelperfect.pipeline.model.protocol import CheckpointError, model_input_side
from pixelperfect.pipeline.model.sam2 import Sam2Segmenter, seeded_sam2
from pixelperfect.pipeline.model.sam2_family import SAM2_MODELS, sam2_config
from pixelperfect.pipeline.options import AutoSettings, Jitter, ProcessSettings, PromptMode
from pixelperfect.pipeline.preprocess.variants import parse_variant
from pixelperfect.pipeline.records import ImageInput
from pixelperfect.pipeline.stages import process_images

transformers = pytest.importorskip("transformers")  # a runtime dependency: present wherever the suite runs
ORACLE_ATOL = 1e-4


def _phantom(height: int, width: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = (rng.random((height, width)) * 60).astype(np.uint8)
    img[height // 4 : 3 * height // 4, width // 5 : 3 * width // 5] += 120
    return img


class Oracle:
    """transformers' own path for one image and one prompt at a time, as its documentation runs it: the
    processor makes the pixels, the model embeds them once (``get_image_embeddings``), then each prompt goes alone
    through the processor (its coordinate normalisation), the model's forward and ``post_process_masks``."""

    def __init__(self, model: Any, side: int, image: np.ndarray) -> None:
        self.model = model
        self.processor = transformers.Sam2Processor(
            transformers.Sam2ImageProcessor(size={"height": side, "width": side})
        )
        self.rgb = np.stack([image] * 3, axis=-1)
        with torch.no_grad():
            pixels = self.processor(images=self.rgb, return_tensors="pt")["pixel_values"]
            self.embeddings = model.get_image_embeddings(pixels)

    @torch.no_grad()
    def __call__(self, **prompt: Any) -> tuple[np.ndarray, np.ndarray]:
        """-> (the three predicted IoUs, the post-processed masks (3, H, W))."""
        sizes = [list(self.rgb.shape[:2])]
        inputs = self.processor(original_sizes=sizes, return_tensors="pt", **prompt)
        inputs.pop("original_sizes")
        out = self.model(image_embeddings=self.embeddings, **inputs, multimask_output=True)
        masks = self.processor.post_process_masks(out.pred_masks, sizes)[0][0]
        return out.iou_scores[0, 0].numpy(), masks.numpy()


@pytest.fixture(scope="module")
def tiny() -> Sam2Segmenter:
    return Sam2Segmenter(seeded_sam2("sam2_tiny", 7), torch.device("cpu"), name="sam2_tiny", encoder_batch=2)


def test_seeded_weights_share_one_positional_matrix_as_real_checkpoints_do(tiny: Sam2Segmenter) -> None:
    # Meta's one ``pe_layer`` is both transformers matrices in a converted checkpoint; two random ones would encode
    # the boxes in another basis than the image, a model no real checkpoint is
    image_pe = tiny.model.shared_image_embedding.positional_embedding
    assert torch.equal(tiny.model.prompt_encoder.shared_embedding.positional_embedding, image_pe)
    assert image_pe.std() > 0.2  # drawn (uniform ±0.5), not left at zero
    assert not torch.equal(seeded_sam2("sam2_tiny", 8).shared_image_embedding.positional_embedding, image_pe)


def test_every_name_has_its_architecture_and_hiera_tiny_is_transformers_default() -> None:
    assert tuple(SAM2_MODELS) == SAM2_MODEL_NAMES  # config.py's list (no pipeline import there) is the table's
    # transformers documents Sam2Config() as facebook/sam2.1-hiera-tiny: our figures from Meta's yaml agree
    assert sam2_config("sam2.1_hiera_tiny").to_dict() == transformers.Sam2Config().to_dict()
    large = sam2_config("sam2.1_hiera_large").vision_config
    assert large.backbone_channel_list == [1152, 576, 288, 144]
    assert large.backbone_config.global_attention_blocks == [23, 33, 43]
    assert sam2_config("medsam2").prompt_encoder_config.image_size == 512
    assert sam2_config("medsam2").vision_config.backbone_feature_sizes == [[128, 128], [64, 64], [32, 32]]


def test_boxes_with_perturbations_equal_the_processor_and_model_per_box(tiny: Sam2Segmenter) -> None:
    images = [_phantom(150, 210, 1), _phantom(128, 96, 2), _phantom(200, 160, 3)]  # non-square, three sizes
    boxes = {0: [[42, 37, 126, 112], [5.5, 4, 60, 40.25]], 1: [[20, 30, 57, 96]], 2: [[32, 50, 96, 150]]}
    inputs = [ImageInput(f"i{i}.png", img, boxes=boxes[i]) for i, img in enumerate(images)]
    settings = ProcessSettings(jitter=Jitter(k=3, shift=4, scale=0.1), seed=5, min_area=0)
    results = process_images(inputs, [parse_variant("raw")], tiny, settings)
    worst, moved = 0.0, []
    for image, result in zip(images, results, strict=True):
        oracle = Oracle(tiny.model, tiny.input_side, image)
        assert len(result.segments) == len(boxes[int(result.key[1])])
        for record in result.segments:
            scores, masks = oracle(input_boxes=[[record.prompt]])
            worst = max(worst, float(np.abs(scores - np.asarray(record.scores)).max()))
            assert record.chosen == int(scores.argmax()) and record.score == pytest.approx(
                scores.max(), abs=ORACLE_ATOL
            )
            stored = cv2.imdecode(np.frombuffer(record.mask_png, np.uint8), cv2.IMREAD_GRAYSCALE) > 0
            assert (stored != masks[record.chosen]).mean() < 1e-3  # a logit at 0 ± 1e-6 may round either way
            best = []
            for *box, score in record.perturbations:
                p_scores, _ = oracle(input_boxes=[[box]])
                assert score == pytest.approx(float(p_scores.max()), abs=ORACLE_ATOL)
                best.append(float(p_scores.max()))
                moved.append(abs(float(p_scores.max()) - float(scores.max())))
            assert record.consistency_std == pytest.approx(float(np.std(best)), abs=ORACLE_ATOL)
    print(f"largest oracle difference, boxes and their perturbations: {worst:.2e}")
    assert worst <= ORACLE_ATOL
    assert np.median(moved) > 10 * ORACLE_ATOL  # a jitter of a few px moves scores far beyond the tolerance


def test_points_and_auto_equal_the_processor_and_model_per_point(tiny: Sam2Segmenter) -> None:
    image = _phantom(160, 200, 4)
    settings = ProcessSettings(jitter=Jitter(k=2, shift=3), seed=1, min_area=0, prompt_mode=PromptMode.points)
    item = ImageInput("p.png", image, boxes=[], points=[[90.0, 70.0, 1.0], [30.0, 120.0, 1.0], [10.0, 10.0, 0.0]])
    (result,) = process_images([item], [parse_variant("raw")], tiny, settings)
    oracle = Oracle(tiny.model, tiny.input_side, image)
    assert len(result.segments) == 2  # one prompt per foreground point, the background point joins each
    for record in result.segments:
        points = [record.prompt[:2], [10.0, 10.0]]
        scores, _ = oracle(input_points=[[points]], input_labels=[[[1, 0]]])
        assert np.abs(scores - np.asarray(record.scores)).max() <= ORACLE_ATOL
    grid = AutoSettings(points_per_side=4, min_score=0.0, min_stability=0.0, lung_only=False)
    auto = ProcessSettings(jitter=Jitter(k=2, shift=3), seed=1, min_area=0, prompt_mode=PromptMode.auto, auto=grid)
    (result,) = process_images([ImageInput("a.png", image, boxes=[])], [parse_variant("raw")], tiny, auto)
    assert result.segments, "the automatic grid kept no mask"
    for record in result.segments[:3]:
        scores, _ = oracle(input_points=[[[record.prompt[:2]]]], input_labels=[[[1]]])
        assert np.abs(scores - np.asarray(record.scores)).max() <= ORACLE_ATOL


@pytest.mark.slow
def test_the_real_hiera_tiny_at_1024_equals_the_processor_and_model() -> None:
    """The one full-size test: SAM 2.1 hiera-tiny's real configuration (1024² input, 31 M parameters)."""
    seg = Sam2Segmenter(seeded_sam2("sam2.1_hiera_tiny", 11), torch.device("cpu"), name="sam2.1_hiera_tiny")
    assert seg.input_side == 1024
    image = _phantom(600, 500, 9)
    settings = ProcessSettings(jitter=Jitter(k=2, shift=5, scale=0.1), seed=2, min_area=0)
    (result,) = process_images([ImageInput("t.png", image, boxes=[[120, 140, 330, 460]])], [parse_variant("raw")],
                               seg, settings)  # fmt: skip
    (record,) = result.segments
    oracle = Oracle(seg.model, 1024, image)
    scores, _ = oracle(input_boxes=[[record.prompt]])
    diffs = [float(np.abs(scores - np.asarray(record.scores)).max())]
    best = []
    for *box, score in record.perturbations:
        p_scores, _ = oracle(input_boxes=[[box]])
        diffs.append(abs(float(p_scores.max()) - float(score)))  # type: ignore[arg-type]
        best.append(float(p_scores.max()))
    diffs.append(abs(float(np.std(best)) - float(record.consistency_std)))  # type: ignore[arg-type]
    print(f"largest oracle difference at 1024² hiera-tiny: {max(diffs):.2e}")
    assert max(diffs) <= ORACLE_ATOL


def test_a_saved_directory_loads_checks_and_hashes(tmp_path: Path, tiny: Sam2Segmenter) -> None:
    tiny.model.save_pretrained(tmp_path / "ok")
    read = lambda d: lambda name: (d / name).read_bytes()  # noqa: E731
    found = read_hf_checkpoint(read(tmp_path / "ok"))
    check_sam2_checkpoint("sam2_tiny", found)
    assert "vision_encoder.backbone.patch_embed.projection.weight" in safetensors_header(
        found.files["model.safetensors"]
    )
    loaded = build_segmenter("sam2_tiny", found, "cpu")
    image = _phantom(100, 120, 5)
    a = loaded.predict_boxes(loaded.encode([image])[0], np.array([[20.0, 20, 80, 70]]))
    b = tiny.predict_boxes(tiny.encode([image])[0], np.array([[20.0, 20, 80, 70]]))
    assert np.array_equal(a.scores, b.scores) and np.array_equal(a.masks, b.masks)
    flipped = dict(found.files)
    data = bytearray(flipped["model.safetensors"])
    data[-1] ^= 1
    flipped["model.safetensors"] = bytes(data)
    assert weights_sha256(flipped) != found.sha256  # one bit of a weight changes the run's checkpoint identity
    assert model_input_side(loaded) is None  # square resize: decoded at full resolution (module docstring)

    with pytest.raises(CheckpointError, match=r"sam2\.1_hiera_tiny.*embed_dim_per_stage|hidden_size is 8"):
        check_sam2_checkpoint("sam2.1_hiera_tiny", found)  # the small test model is no hiera-tiny
    (tmp_path / "v1").mkdir()
    (tmp_path / "v1" / "config.json").write_text(json.dumps({"model_type": "sam"}))
    (tmp_path / "v1" / "model.safetensors").write_bytes(found.files["model.safetensors"])
    with pytest.raises(CheckpointError, match="SAM v1 checkpoint"):
        check_sam2_checkpoint("sam2_tiny", read_hf_checkpoint(read(tmp_path / "v1")))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text(json.dumps(found.config))
    with pytest.raises(CheckpointError, match=r"no weights: model\.safetensors is missing"):
        read_hf_checkpoint(read(tmp_path / "empty"))
    with pytest.raises(CheckpointError, match=r"no config\.json"):
        read_hf_checkpoint(read(tmp_path / "nothing"))


def test_transformers_missing_or_too_old_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    from importlib import metadata, util

    assert dependency_problem("sam2_tiny") is None and dependency_problem("sam_tiny") is None
    monkeypatch.setattr(metadata, "version", lambda name: "4.40.0")
    problem = dependency_problem("sam2.1_hiera_tiny")
    assert problem is not None and problem.package == "transformers" and "4.40.0" in str(problem)
    monkeypatch.setattr(util, "find_spec", lambda name: None)
    problem = dependency_problem("medsam2")
    assert problem is not None and "lacks" in str(problem) and "transformers>=" in str(problem)
    assert dependency_problem("sam_vit_b") is None  # SAM v1 does not need it


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bf16_encoder_masks_agree_with_fp32_on_cuda() -> None:
    """On CUDA the encoder runs under bf16 autocast and the decoder in fp32: masks agree with strict fp32 at mean
    IoU >= 0.98 (hiera-tiny at 1024², seeded weights, boxes and their jitter). Run by ``PP_GPU_PARTS=sam2``."""
    cuda = torch.device("cuda")
    net = seeded_sam2("sam2.1_hiera_tiny", 11)
    segs = {p: Sam2Segmenter(net, cuda, name="sam2.1_hiera_tiny", precision=p) for p in ("bf16", "fp32")}
    assert segs["bf16"].bf16 and not segs["fp32"].bf16
    images = [_phantom(900, 800, s) for s in range(3)]
    boxes = np.array([[160.0, 225, 480, 675], [150, 210, 500, 700], [170, 230, 470, 660]])
    ious = []
    for image in images:
        a, b = (segs[p].predict_boxes(segs[p].encode([image])[0], boxes).masks for p in ("bf16", "fp32"))
        ious += [np.count_nonzero(x & y) / max(1, np.count_nonzero(x | y)) for x, y in zip(a, b, strict=True)]
    assert float(np.mean(ious)) >= 0.98, f"mean IoU bf16 vs fp32 {np.mean(ious):.4f}"
