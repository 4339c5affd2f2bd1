"""SamSegmenter's speed paths give the reference answers: prepared inputs, the CPU threshold path, padding for a
compiled encoder; and on CUDA, bf16 masks agree with fp32 (mean mask IoU >= 0.98)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from segment_anything.utils.amg import calculate_stability_score

from pixelperfect.pipeline.model.protocol import STABILITY_OFFSET
from pixelperfect.pipeline.model.sam import SamInput, SamSegmenter
from pixelperfect.pipeline.model.weights import TinyConfig, build_tiny_sam, load_sam

BOXES = np.array([[10.0, 20, 120, 150], [60, 40, 200, 170], [0, 0, 255, 255]])


def _tiny(**kwargs: object) -> SamSegmenter:
    torch.manual_seed(3)
    return SamSegmenter(build_tiny_sam(TinyConfig()), torch.device("cpu"), name="sam_tiny", **kwargs)  # type: ignore[arg-type]


def _images(n: int, shape: tuple[int, int] = (256, 256)) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [(rng.random(shape) * 255).astype(np.uint8) for _ in range(n)]


@pytest.mark.parametrize("shape", [(256, 256), (300, 200)])
def test_prepared_inputs_encode_like_arrays(shape: tuple[int, int]) -> None:
    seg = _tiny(encoder_batch=2)
    images = _images(3, shape)
    prepared = [seg.prepare(img) for img in images]
    assert isinstance(prepared[0], SamInput) and prepared[0].pixels.dtype == torch.uint8
    assert max(prepared[0].pixels.shape) == 256 and prepared[0].original_size == shape
    for a, b in zip(seg.encode(images), seg.encode(prepared), strict=True):
        assert torch.equal(a.features, b.features) and a.input_size == b.input_size


@pytest.mark.parametrize("host_post", [True, False], ids=["numpy-post", "device-post"])
@pytest.mark.parametrize("shape", [(256, 256), (300, 200)])
def test_decode_paths_match_segment_anythings_postprocessing(shape: tuple[int, int], host_post: bool) -> None:
    """Both post-processing paths — numpy on the host (CPU) and torch on the logits' device (CUDA, run here on CPU
    tensors) — give segment-anything's own masks, candidate choice, scores and stability."""
    seg = _tiny(host_post=host_post)
    assert seg.host_post is host_post and _tiny().host_post  # the default on a CPU: numpy
    (emb,) = seg.encode(_images(1, shape))
    pred = seg.predict_boxes(emb, BOXES)
    with torch.inference_mode():  # the reference: Sam.postprocess_masks and torch thresholds
        box_t = seg.transform.apply_boxes_torch(torch.as_tensor(BOXES, dtype=torch.float32), shape)
        sparse, dense = seg.sam.prompt_encoder(points=None, boxes=box_t, masks=None)
        pe = seg.sam.prompt_encoder.get_dense_pe()
        low, iou = seg.sam.mask_decoder(
            image_embeddings=emb.features[None],
            image_pe=pe,
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=True,
        )
        chosen = iou.argmax(1)
        best = low[torch.arange(len(chosen)), chosen][:, None]
        logits = seg.sam.postprocess_masks(best, emb.input_size, shape)[:, 0]
    t = seg.sam.mask_threshold
    stability = calculate_stability_score(logits, t, STABILITY_OFFSET)
    assert np.array_equal(pred.masks, (logits > t).numpy())
    assert np.array_equal(pred.chosen, chosen.numpy())
    assert np.allclose(pred.scores, iou.numpy()) and np.allclose(pred.stability, stability.numpy())


def test_compiled_encoder_chunks_are_padded_to_one_shape() -> None:
    seg = _tiny(encoder_batch=4)
    shapes: list[tuple[int, ...]] = []
    seg._encoder = lambda batch: (shapes.append(tuple(batch.shape)), seg.sam.image_encoder(batch))[1]  # no compiler
    out = seg.encode(_images(5))
    assert len(out) == 5 and shapes == [(4, 3, 256, 256), (4, 3, 256, 256)]
    reference = _tiny(encoder_batch=4).encode(_images(5))
    assert all(torch.allclose(a.features, b.features, atol=1e-5) for a, b in zip(out, reference, strict=True))


def test_precision_choice_per_device() -> None:
    assert not _tiny().bf16  # auto on a CPU: fp32
    assert _tiny(precision="bf16").bf16  # asked for: bf16 autocast on the CPU too
    assert not _tiny(precision="fp32").bf16


def test_bf16_on_cpu_decodes_in_fp32() -> None:
    seg = _tiny(precision="bf16")
    (emb,) = seg.encode(_images(1))
    assert emb.features.dtype == torch.float32
    pred = seg.predict_boxes(emb, BOXES)
    assert pred.masks.shape == (3, 256, 256) and pred.masks.dtype == bool
    (ref,) = _tiny().encode(_images(1))
    assert not torch.equal(ref.features, emb.features)  # the encoder really ran in bf16
    assert torch.allclose(ref.features, emb.features, atol=0.1)


def test_bad_settings_fail_at_construction() -> None:
    with pytest.raises(ValueError, match="encoder_batch"):
        _tiny(encoder_batch=0)
    with pytest.raises(ValueError, match="precision"):
        _tiny(precision="fp16")


def _mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def _agreement(device: torch.device, n_images: int) -> list[float]:
    """ViT-B (random seeded weights), phantom radiographs at 1024², the research's boxes and their perturbations:
    mask IoU of the bf16 path against strict fp32 (TF32 off), one value per prompt."""
    from pixelperfect.pipeline.options import Jitter
    from pixelperfect.pipeline.prompt.boxes import perturb_box, prompt_rng
    from pixelperfect.synthetic.phantoms import display_uint8, make_phantom

    torch.manual_seed(0)
    sam = load_sam("sam_vit_b", None)  # one model: both segmenters share its weights
    fp32 = SamSegmenter(sam, device, name="sam_vit_b", encoder_batch=4, precision="fp32")
    bf16 = SamSegmenter(sam, device, name="sam_vit_b", encoder_batch=4, precision="bf16")
    assert bf16.bf16 and not fp32.bf16
    torch.set_float32_matmul_precision("highest")  # the reference in true fp32: construction turned TF32 on
    torch.backends.cudnn.allow_tf32 = False
    try:
        phantoms = [make_phantom(i, seed=5, size=1024, positive_fraction=1.0) for i in range(n_images)]
        ref_emb = fp32.encode([display_uint8(p.image) for p in phantoms])
        bf_emb = bf16.encode([display_uint8(p.image) for p in phantoms])
        assert all(e.features.dtype == torch.float32 for e in bf_emb)  # stored and decoded in fp32
        assert any(not torch.equal(a.features, b.features) for a, b in zip(ref_emb, bf_emb, strict=True))
        ious = []
        for i, (phantom, e32, e16) in enumerate(zip(phantoms, ref_emb, bf_emb, strict=True)):
            base = np.array(phantom.boxes, np.float64).reshape(-1, 4)
            boxes = np.concatenate([base] + [perturb_box(b, Jitter(), prompt_rng(0, str(i), p), 1024, 1024)
                                             for p, b in enumerate(base)])  # fmt: skip
            a, b = fp32.predict_boxes(e32, boxes), bf16.predict_boxes(e16, boxes)
            assert 0.01 < float(np.mean(a.masks)) < 0.9  # not trivially empty or full-frame masks
            ious += [_mask_iou(x, y) for x, y in zip(a.masks, b.masks, strict=True)]
    finally:
        torch.set_float32_matmul_precision("highest")
    return ious


#: bf16 matmuls in ATen's scalar kernels: no AVX2 (or ATEN_CPU_CAPABILITY=default) and no BF16 instructions oneDNN
#: may use (AVX512-BF16, AMX; or ONEDNN_MAX_CPU_ISA below them). A bf16 Linear of ViT-B's size then took 34x its
#: native time on the project's VM (1.98 s against 0.058 s; AVX2 kernels: 0.50 s), so the check below (~40 s)
#: would run past pytest's 10-minute limit; where bf16 runs natively or in AVX2 kernels the check runs.
SCALAR_BF16 = torch.backends.cpu.get_cpu_capability() == "DEFAULT" and not torch.ops.mkldnn._is_mkldnn_bf16_supported()
#: bf16 without native instructions (AVX2 kernels: an AVX2-only CPU, or ONEDNN_MAX_CPU_ISA=AVX2 on this VM) is ~9x
#: slower: the two-film check took 493 s alone at load 4 under the AVX2 setting (2026-12-07), and 485 s on a machine
#: that reports native bf16, near pytest's limit: the check takes one film (the same prompts) under 20 minutes.


@pytest.mark.slow
@pytest.mark.timeout(1200)
@pytest.mark.skipif(SCALAR_BF16, reason="bf16 here runs in ATen's scalar kernels: ViT-B would take ~30x its 40 s")
def test_bf16_masks_agree_with_fp32_on_cpu() -> None:
    """The same bf16 path on a CPU (autocast on the CPU; ~40 s on 2 cores with native bf16): mean mask IoU >= 0.98.
    On 2026-12-07's machine, which reports native bf16, the two-film check took 485 s of its 600 s limit inside
    `make test`, and one film 430 s alone: the time is the models' set-up and fp32 reference, not the films, so the
    limit is 20 minutes everywhere (one film, as where bf16 is not native)."""
    films = 1
    ious = _agreement(torch.device("cpu"), films)
    assert len(ious) >= 3 * films
    assert float(np.mean(ious)) >= 0.98, f"mean IoU bf16 vs fp32 {np.mean(ious):.4f}"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bf16_masks_agree_with_fp32_on_cuda() -> None:
    """On CUDA, bf16 autocast encoder against strict fp32: mean mask IoU >= 0.98 (issue 8)."""
    ious = _agreement(torch.device("cuda"), 4)
    assert len(ious) >= 8
    assert float(np.mean(ious)) >= 0.98, f"mean IoU bf16 vs fp32 {np.mean(ious):.4f}"
