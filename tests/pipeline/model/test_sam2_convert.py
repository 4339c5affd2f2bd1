"""``convert-checkpoint`` proven by equal outputs: Meta's own SAM 2 code vs the converted Hugging Face directory.

The reference is the ``sam2`` package from PyPI (a third-party re-upload of Meta's source, test-only: pinned by
version and hash in ``tests/requirements-reference.txt``, never imported by ``pixelperfect/``). It builds a seeded
random Meta-format model from Meta's own config (hiera-tiny at 1024², and at 512² as MedSAM2 is), the state dict is
saved as Meta saves it (``{"model": ...}``), and Meta's ``SAM2ImagePredictor`` scores boxes on a phantom X-ray. The
converted directory, loaded by ``transformers`` (``Sam2Processor`` + ``Sam2Model``), must give the same multimask
scores (<= 1e-4) and masks (IoU, see ``MASK_IOU``); given Meta's own input tensor, the same low-resolution logits.

``SCORERS`` holds the converted side: ``transformers`` as above, and ``pixelperfect``, the directory as a worker
runs it (``read_hf_checkpoint`` -> ``build_segmenter`` -> ``process_images``, K = 0). PixelPerfect stores per box
all three multimask scores (``segments.scores``) but only the mask of the highest one (``chosen``), so its scores
are compared in full and its one mask with Meta's mask of the same candidate.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from pixelperfect.cli import app
from pixelperfect.pipeline.model.builder import build_segmenter
from pixelperfect.pipeline.model.hf_checkpoint import read_hf_checkpoint
from pixelperfect.pipeline.model.sam2_convert import VIDEO_ONLY, convert_meta_checkpoint
from pixelperfect.pipeline.model.weights import CheckpointError
from pixelperfect.pipeline.options import Jitter, ProcessSettings
from pixelperfect.pipeline.preprocess.variants import parse_variant
from pixelperfect.pipeline.records import ImageInput
from pixelperfect.pipeline.stages import process_images
from pixelperfect.synthetic.archive_phantoms import crop_phantom
from pixelperfect.synthetic.phantoms import display_uint8, make_phantom

SCORE_TOL = 1e-4  # the bound on a score; measured: < 1e-5
# Meta's predictor resizes the image in float; transformers' processor resizes it to 8 bits, so the model inputs
# differ by up to one grey level (0.017 after normalisation) and random-weight logits, shallow around 0 (|logit| ~0.5),
# move by ~0.01: measured mask IoU 0.995 at the worst. Given the *same* input tensor the converted model reproduces
# Meta's low-resolution logits to < 1e-6 (LOGIT_TOL), which is what proves the key mapping.
MASK_IOU = 0.98
LOGIT_TOL = 1e-4

# (Meta config, hydra overrides, image shape) per model name: MedSAM2 is Meta's hiera-tiny layout at 512². The
# 1024² image needs no resize, so both sides see the same input and its masks must be equal; the 700 x 600 one
# goes through each side's own resize (and through Meta's input tensor in the logit test).
CASES = {
    "sam2.1_hiera_tiny": ("configs/sam2.1/sam2.1_hiera_t.yaml", (), (1024, 1024)),
    "medsam2": ("configs/sam2.1/sam2.1_hiera_t.yaml", ("++model.image_size=512",), (700, 600)),
}
BOXES = np.array([[150.0, 200.0, 480.0, 620.0], [520.0, 120.0, 580.0, 260.0], [40.0, 40.0, 560.0, 660.0]])


@functools.cache
def meta_model(config: str, overrides: tuple[str, ...], seed: int = 0) -> torch.nn.Module:
    """Meta's ``SAM2Base`` with seeded random weights: its own init, then noise on every tensor so that the
    zero- or one-initialised ones (biases, norms, embeddings) are distinct and a swapped mapping would show."""
    from sam2.build_sam import build_sam2

    torch.manual_seed(seed)
    model = build_sam2(config, None, device="cpu", mode="eval", hydra_overrides_extra=list(overrides))
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.state_dict().values():
            if p.is_floating_point():
                p.add_(torch.randn(p.shape, generator=gen) * 0.02)
    return model


def phantom_rgb(shape: tuple[int, int]) -> np.ndarray:
    grey = display_uint8(crop_phantom(make_phantom(7, size=1200), shape).image)
    return np.repeat(grey[..., None], 3, axis=2)


@dataclass
class Outputs:
    scores: np.ndarray  # (boxes, 3) multimask IoU predictions
    masks: np.ndarray  # (boxes, 3, H, W) bool at the image's resolution; (boxes, 1, H, W) where ``chosen`` is set
    low_res: np.ndarray | None = None  # (boxes, 3, side / 4, side / 4) logits (not PixelPerfect's: it keeps none)
    pixel_values: torch.Tensor | None = None  # the model input (transformers' side)
    chosen: np.ndarray | None = None  # (boxes,) the candidate whose mask ``masks`` holds (PixelPerfect's side)


def meta_outputs(model: torch.nn.Module, image: np.ndarray, boxes: np.ndarray) -> tuple[Outputs, torch.Tensor]:
    """Meta's predictor, all boxes in one call; also the model input tensor it made of the image."""
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    predictor = SAM2ImagePredictor(model)
    # the predictor's feature grid is written for 1024²; MedSAM2's own code sets it for 512² the same way
    predictor._bb_feat_sizes = [(model.image_size // s, model.image_size // s) for s in (4, 8, 16)]
    predictor.set_image(image)
    masks, scores, low_res = predictor.predict(box=boxes, multimask_output=True)
    return Outputs(scores, masks.astype(bool), low_res), predictor._transforms(image)[None]


def transformers_outputs(
    model_dir: Path, image: np.ndarray, boxes: np.ndarray, pixel_values: torch.Tensor | None = None
) -> Outputs:
    """The converted directory through transformers' own processor and model (all boxes of the image in one call);
    ``pixel_values`` replaces the processor's image tensor (the boxes still go through the processor)."""
    from transformers import Sam2ImageProcessor, Sam2Model, Sam2Processor

    model = Sam2Model.from_pretrained(model_dir).eval()
    side = model.config.prompt_encoder_config.image_size
    processor = Sam2Processor(image_processor=Sam2ImageProcessor(size={"height": side, "width": side}))
    inputs = processor(images=image, input_boxes=[boxes.tolist()], return_tensors="pt")
    if pixel_values is not None:
        inputs["pixel_values"] = pixel_values
    with torch.no_grad():
        out = model(**inputs, multimask_output=True)
    full = processor.post_process_masks(out.pred_masks, inputs["original_sizes"])[0]
    return Outputs(
        out.iou_scores[0].numpy(), full.numpy().astype(bool), out.pred_masks[0].numpy(), inputs["pixel_values"]
    )


def pixelperfect_outputs(model_dir: Path, image: np.ndarray, boxes: np.ndarray) -> Outputs:
    """The converted directory as a worker runs it: read as files (``read_hf_checkpoint``, checked and hashed),
    built by ``build_segmenter`` on the CPU, every box of the grey image through ``process_images`` (no
    perturbations, no area filter) -> the stored rows' three scores, chosen candidate and decoded mask PNG."""
    import cv2

    name = model_dir.name  # the fixture names the directory for its model
    checkpoint = read_hf_checkpoint(lambda f: (model_dir / f).read_bytes(), str(model_dir))
    segmenter = build_segmenter(name, checkpoint, "cpu")
    grey = image[..., 0]  # the phantom is one grey channel three times; a worker decodes it to (H, W)
    settings = ProcessSettings(jitter=Jitter(k=0), min_area=0)
    (result,) = process_images([ImageInput("phantom.png", grey, boxes=boxes.tolist())], [parse_variant("raw")],
                               segmenter, settings)  # fmt: skip
    rows = sorted(result.segments, key=lambda r: r.prompt_index)
    assert [r.prompt_index for r in rows] == list(range(len(boxes)))  # one stored row per box
    assert all(r.perturbations == [] for r in rows)
    masks = [cv2.imdecode(np.frombuffer(r.mask_png, np.uint8), cv2.IMREAD_GRAYSCALE) > 0 for r in rows]
    return Outputs(
        np.array([r.scores for r in rows], np.float32),
        np.stack(masks)[:, None],
        chosen=np.array([r.chosen for r in rows]),
    )


#: the converted side: transformers' own processor and model, and PixelPerfect's worker path
SCORERS: dict[str, Callable[[Path, np.ndarray, np.ndarray], Outputs]] = {
    "transformers": transformers_outputs,
    "pixelperfect": pixelperfect_outputs,
}


def scored(converted: dict, scorer: str) -> Outputs:
    """``SCORERS[scorer]`` on the case's image and boxes, once per case (two tests read it)."""
    if scorer not in converted["scored"]:
        converted["scored"][scorer] = SCORERS[scorer](converted["dir"], converted["image"], BOXES)
    return converted["scored"][scorer]


@pytest.fixture(scope="module", params=list(CASES))
def converted(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict:
    name = request.param
    config, overrides, shape = CASES[name]
    meta = meta_model(config, overrides)
    tmp = tmp_path_factory.mktemp(name)
    pt = tmp / "meta.pt"
    torch.save({"model": meta.state_dict()}, pt)  # Meta's release layout
    out = tmp / name  # the directory is named for its model (``pixelperfect_outputs`` reads it there)
    result = CliRunner().invoke(app, ["convert-checkpoint", str(pt), str(out), "--model", name])
    assert result.exit_code == 0, result.output
    image = phantom_rgb(shape)
    reference, pixels = meta_outputs(meta, image, BOXES)
    return {
        "name": name,
        "dir": out,
        "image": image,
        "meta": reference,
        "pixels": pixels,
        "log": result.output,
        "scored": {},
    }


@pytest.mark.slow
def test_converted_model_reproduces_meta_logits_on_the_same_input(converted: dict) -> None:
    meta = converted["meta"]
    if converted["image"].shape[:2] == (1024, 1024):  # no resize: the processor's own tensor is Meta's
        ours = scored(converted, "transformers")
        assert ours.pixel_values is not None
        assert (converted["pixels"] - ours.pixel_values).abs().max() <= 1e-5  # float rounding; a grey level: 0.017
    else:
        ours = transformers_outputs(converted["dir"], converted["image"], BOXES, pixel_values=converted["pixels"])
    assert ours.low_res is not None and meta.low_res is not None
    assert ours.low_res.shape == meta.low_res.shape
    assert np.abs(ours.low_res - meta.low_res).max() <= LOGIT_TOL
    assert np.abs(ours.scores - meta.scores).max() <= SCORE_TOL
    assert (ours.masks != meta.masks).mean() <= 1e-5  # only a pixel whose logit is within rounding of 0 may flip
    assert "video-memory tensors dropped" in converted["log"]


@pytest.mark.slow
@pytest.mark.parametrize("scorer", list(SCORERS))
def test_converted_checkpoint_scores_like_meta(converted: dict, scorer: str) -> None:
    meta = converted["meta"]
    ours = scored(converted, scorer)
    assert ours.scores.shape == meta.scores.shape == (len(BOXES), 3)
    assert np.abs(ours.scores - meta.scores).max() <= SCORE_TOL, (ours.scores, meta.scores)
    if ours.chosen is None:  # all three candidates' masks
        pairs = [(ours.masks[b, k], meta.masks[b, k], k) for b in range(len(BOXES)) for k in range(3)]
        assert ours.masks.shape == meta.masks.shape
    else:  # the one mask kept, of the candidate with the highest score (equal to Meta's within SCORE_TOL)
        assert np.array_equal(ours.chosen, ours.scores.argmax(axis=1))
        pairs = [(ours.masks[b, 0], meta.masks[b, k], k) for b, k in enumerate(ours.chosen)]
        assert ours.masks.shape == (len(BOXES), 1, *meta.masks.shape[2:])
    ious = []
    for b, (mine, theirs, k) in enumerate(pairs):
        union = (mine | theirs).sum()
        ious.append((mine & theirs).sum() / union if union else 1.0)
        assert ious[-1] >= MASK_IOU, (converted["name"], b, k, ious[-1])
    worst = np.abs(ours.scores - meta.scores).max()
    print(f"{converted['name']} {scorer}: largest score difference {worst:.2e}, lowest mask IoU {min(ious):.4f}")
    # random weights still give masks with content, or the mask comparison would prove nothing
    assert meta.masks.any(axis=(2, 3)).mean() > 0.5 and not meta.masks.all(axis=(2, 3)).any()


def test_converted_directory_holds_config_and_safetensors(converted: dict) -> None:
    from transformers import Sam2Config

    assert sorted(p.name for p in converted["dir"].iterdir()) == ["config.json", "model.safetensors"]
    side = 512 if converted["name"] == "medsam2" else 1024
    assert Sam2Config.from_pretrained(converted["dir"]).prompt_encoder_config.image_size == side


@pytest.fixture(scope="module")
def tiny_state() -> dict[str, torch.Tensor]:
    return dict(meta_model(*CASES["sam2.1_hiera_tiny"][:2]).state_dict())


def test_video_memory_keys_are_dropped_and_everything_else_maps(tiny_state: dict[str, torch.Tensor]) -> None:
    model = convert_meta_checkpoint({"model": tiny_state}, "sam2.1_hiera_tiny")
    assert any(k.startswith(VIDEO_ONLY) for k in tiny_state)
    got = model.state_dict()
    # spot checks of the renames that are not one-to-one
    points = torch.cat([tiny_state[f"sam_prompt_encoder.point_embeddings.{i}.weight"] for i in range(4)])
    assert torch.equal(got["prompt_encoder.point_embed.weight"], points)
    pe = tiny_state["sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"]
    assert torch.equal(got["shared_image_embedding.positional_embedding"], pe)
    assert torch.equal(got["mask_decoder.iou_prediction_head.proj_out.weight"],
                       tiny_state["sam_mask_decoder.iou_prediction_head.layers.2.weight"])  # fmt: skip
    assert torch.equal(got["mask_decoder.iou_prediction_head.layers.0.weight"],
                       tiny_state["sam_mask_decoder.iou_prediction_head.layers.1.weight"])  # fmt: skip


def test_a_larger_hiera_for_tiny_names_the_mismatch(tiny_state: dict[str, torch.Tensor]) -> None:
    # hiera-small has 16 blocks where tiny has 12: the extra blocks are named, nothing is built
    with pytest.raises(CheckpointError, match=r"does not fit sam2\.1_hiera_small .*12 blocks.*16 blocks.*missing"):
        convert_meta_checkpoint({"model": tiny_state}, "sam2.1_hiera_small")


def test_a_mis_shaped_tensor_is_named(tiny_state: dict[str, torch.Tensor]) -> None:
    bad = dict(tiny_state)
    bad["sam_mask_decoder.iou_token.weight"] = torch.zeros(1, 128)
    with pytest.raises(CheckpointError, match=r"mask_decoder\.iou_token\.weight \(1, 128\) != \(1, 256\)"):
        convert_meta_checkpoint({"model": bad}, "sam2.1_hiera_tiny")


def test_unknown_and_missing_keys_are_named(tiny_state: dict[str, torch.Tensor]) -> None:
    bad = {k: v for k, v in tiny_state.items() if k != "sam_mask_decoder.obj_score_token.weight"}
    bad["sam_mask_decoder.extra_head.weight"] = torch.zeros(3)
    with pytest.raises(CheckpointError) as info:
        convert_meta_checkpoint({"model": bad}, "sam2.1_hiera_tiny")
    assert "1 missing (mask_decoder.obj_score_token.weight)" in str(info.value)
    assert "1 unexpected (mask_decoder.extra_head.weight)" in str(info.value)


def test_a_sam_v1_checkpoint_is_refused_as_such() -> None:
    from pixelperfect.pipeline.model.weights import seeded_tiny_sam

    with pytest.raises(CheckpointError, match="SAM v1"):
        convert_meta_checkpoint(seeded_tiny_sam(0).state_dict(), "sam2.1_hiera_tiny")


def test_cli_refuses_bad_input_and_writes_nothing(tmp_path: Path, tiny_state: dict[str, torch.Tensor]) -> None:
    runner = CliRunner()
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    out = tmp_path / "out"
    result = runner.invoke(app, ["convert-checkpoint", str(junk), str(out), "--model", "sam2.1_hiera_tiny"])
    assert result.exit_code == 2 and "does not load as a torch checkpoint" in result.output
    result = runner.invoke(app, ["convert-checkpoint", str(junk), str(out), "--model", "sam3"])
    assert result.exit_code == 2 and "unknown SAM 2 model 'sam3'" in result.output and "medsam2" in result.output
    pt = tmp_path / "tiny.pt"
    torch.save({"model": tiny_state}, pt)
    result = runner.invoke(app, ["convert-checkpoint", str(pt), str(out), "--model", "sam2.1_hiera_large"])
    assert result.exit_code == 2 and "does not fit sam2.1_hiera_large" in result.output
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["junk.pt", "tiny.pt"]
