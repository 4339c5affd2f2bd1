"""SAM 2 / 2.1 / MedSAM2 behind the :class:`~pixelperfect.pipeline.model.protocol.Segmenter` protocol, built with
Hugging Face ``transformers``' own ``Sam2Model`` (no copy of its modules).

One batched ``get_image_embeddings`` call per chunk of ``encoder_batch`` images (bf16 autocast on CUDA), then every
prompt of an image — the base boxes and their K perturbations, or the points — through the prompt encoder and mask
decoder in one ``Sam2Model`` forward on the cached embeddings (fp32). What the library's ``Sam2Processor`` does
around the model is done here the same way, so the outputs equal the processor + model path for each single prompt
(``tests/pipeline/model/test_sam2_oracle.py``):

- pixels: RGB (a grey image's one channel three times), resized to the model's square input (``S x S``, not the
  longest side + padding of SAM v1) by torchvision's bilinear ``resize`` with antialiasing on uint8, then
  ``(x - 255·mean) / (255·std)`` in fp32 with ImageNet's mean and std;
- boxes and points: ``x · S / W``, ``y · S / H`` in fp32;
- masks: the chosen candidate's ``S/4`` logits resized bilinearly (``align_corners=False``) straight to the
  image's ``(H, W)``, thresholded at 0.

The multimask best (highest predicted IoU of the three candidates) and the stability score are computed as for
SAM v1 (:mod:`pixelperfect.pipeline.model.sam`), on the up-sampled logits.

Reduced-resolution decoding: SAM v1 resizes the long side to its input, so a decode whose long side is at least
that size loses nothing; SAM 2 stretches both sides to ``S``, so the short side would have to reach ``S`` too — a
rule per image, not per model. This segmenter therefore has no ``img_size`` and ``model_input_side`` answers
``None``: images are decoded at full resolution (a reduced decode is still accepted through ``original_size``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pixelperfect.pipeline.model.hf_checkpoint import HfCheckpoint, check_sam2_checkpoint
from pixelperfect.pipeline.model.protocol import (
    STABILITY_OFFSET,
    CheckpointError,
    MaskPrediction,
    check_options,
    empty_prediction,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # transformers' IMAGENET_DEFAULT_MEAN / _STD: Sam2ImageProcessor's
IMAGENET_STD = (0.229, 0.224, 0.225)
RESCALE = 1 / 255
MASK_THRESHOLD = 0.0
INIT_SEED = 1234  # random weights (no checkpoint): the same in every worker process


@dataclass
class Sam2Input:
    """An image resized for the encoder on a CPU thread: ``pixels`` ``(C, S, S)`` uint8 (``C`` 1 or 3; pinned on
    CUDA), ``original_size`` ``(H, W)`` of the image the prompts and masks refer to."""

    pixels: torch.Tensor
    original_size: tuple[int, int]


@dataclass
class Sam2Embedding:
    """The three feature levels of one image (strides 4, 8, 16; the first two already through the decoder's
    ``conv_s0``/``conv_s1``, as ``get_image_embeddings`` gives them), fp32 on the model's device."""

    levels: tuple[torch.Tensor, ...]
    original_size: tuple[int, int]


class Sam2Segmenter:
    """A ``transformers`` ``Sam2Model`` on one device. ``precision``: ``auto`` runs the image encoder under bf16
    autocast on CUDA and in fp32 on a CPU, ``bf16`` on either, ``fp32`` never; the prompt encoder and mask
    decoder always run in fp32. ``host_post``: threshold and count stability in numpy (default on a CPU)."""

    def __init__(
        self,
        model: torch.nn.Module,
        device: torch.device,
        *,
        name: str,
        encoder_batch: int = 8,
        precision: str = "auto",
        compile_encoder: bool = False,
        host_post: bool | None = None,
    ) -> None:
        check_options(encoder_batch, precision)
        self.name = name
        self.device = device
        self.model: Any = model.to(device).eval()
        self.encoder_batch = encoder_batch
        self.input_side = int(model.config.prompt_encoder_config.image_size)  # type: ignore[union-attr,arg-type]
        self.bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
        self.host_post = device.type == "cpu" if host_post is None else bool(host_post)
        self.compiled = compile_encoder
        embed: Any = self.model.get_image_embeddings
        self._embed: Any = torch.compile(embed, dynamic=False) if compile_encoder else embed
        mean = torch.tensor(IMAGENET_MEAN) * (1.0 / RESCALE)  # as transformers fuses rescale into normalize
        std = torch.tensor(IMAGENET_STD) * (1.0 / RESCALE)
        self._mean = mean.to(device)[:, None, None]
        self._std = std.to(device)[:, None, None]
        if device.type == "cuda":
            torch.set_float32_matmul_precision("high")
            torch.backends.cudnn.allow_tf32 = True

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.bf16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def prepare(self, image: np.ndarray, original_size: tuple[int, int] | None = None) -> Sam2Input:
        """``(H, W)`` or ``(H, W, 3)`` uint8 -> :class:`Sam2Input` (CPU, thread-safe). ``original_size``: the
        full image's ``(H, W)`` when ``image`` is a reduced decode of it."""
        from torchvision.transforms.v2 import functional as tvF

        height, width = original_size or image.shape[:2]
        tensor = torch.from_numpy(np.ascontiguousarray(image))
        chw = tensor[None] if tensor.ndim == 2 else tensor.permute(2, 0, 1)
        side = self.input_side
        resized = tvF.resize(chw, [side, side], interpolation=tvF.InterpolationMode.BILINEAR, antialias=True)
        resized = resized.contiguous()
        if self.device.type == "cuda":
            resized = resized.pin_memory()
        return Sam2Input(resized, (int(height), int(width)))

    def _normalised(self, item: Sam2Input) -> torch.Tensor:
        pixels = item.pixels.to(self.device, non_blocking=True)
        rgb = pixels.expand(3, -1, -1) if pixels.shape[0] == 1 else pixels
        return (rgb.to(torch.float32) - self._mean) / self._std

    @torch.inference_mode()
    def encode(self, images: Sequence[Any]) -> list[Any]:
        """One ``get_image_embeddings`` call per chunk of ``encoder_batch`` images -> :class:`Sam2Embedding` each."""
        items = [img if isinstance(img, Sam2Input) else self.prepare(img) for img in images]
        out: list[Any] = []
        for start in range(0, len(items), self.encoder_batch):
            chunk = items[start : start + self.encoder_batch]
            batch = torch.stack([self._normalised(item) for item in chunk])
            if self.compiled and len(chunk) < self.encoder_batch:  # one static shape: compile once
                batch = torch.cat([batch, batch.new_zeros((self.encoder_batch - len(chunk), *batch.shape[1:]))])
            with self.autocast():
                levels = self._embed(batch)
            for i, item in enumerate(chunk):
                out.append(Sam2Embedding(tuple(level[i].float() for level in levels), item.original_size))
        return out

    def _scaled(self, coords: np.ndarray, original_size: tuple[int, int]) -> torch.Tensor:
        """XY pixel coordinates -> the model's ``S x S`` grid, as ``Sam2Processor._normalize_coordinates``."""
        height, width = original_size
        t = torch.as_tensor(np.asarray(coords, np.float64)).to(torch.float32).clone()
        t[..., 0] = t[..., 0] * (self.input_side / width)
        t[..., 1] = t[..., 1] * (self.input_side / height)
        return t.to(self.device)

    @torch.inference_mode()
    def predict_boxes(self, embedding: Any, boxes: np.ndarray) -> MaskPrediction:
        emb: Sam2Embedding = embedding
        if len(boxes) == 0:
            return empty_prediction(*emb.original_size)
        corners = self._scaled(np.asarray(boxes, np.float64).reshape(-1, 2, 2), emb.original_size).reshape(-1, 4)
        return self._decode(emb, input_boxes=corners[None])

    @torch.inference_mode()
    def predict_points(self, embedding: Any, points: np.ndarray, labels: np.ndarray) -> MaskPrediction:
        """``points`` ``(M, P, 2)`` XY, ``labels`` ``(M, P)`` (1 foreground, 0 background): one prompt per row."""
        emb: Sam2Embedding = embedding
        pts = np.asarray(points, np.float64).reshape(len(points), -1, 2)
        if len(pts) == 0:
            return empty_prediction(*emb.original_size)
        lab = torch.as_tensor(np.asarray(labels).reshape(len(pts), -1), dtype=torch.int64, device=self.device)
        return self._decode(emb, input_points=self._scaled(pts, emb.original_size)[None], input_labels=lab[None])

    def _decode(self, emb: Sam2Embedding, **prompts: torch.Tensor) -> MaskPrediction:
        """All prompts of one image in one forward on the cached embedding (fp32), then the chosen candidate's
        logits up-sampled to the image and thresholded; one copy back per image."""
        out = self.model(image_embeddings=[level[None] for level in emb.levels], multimask_output=True, **prompts)
        iou = out.iou_scores[0].float()  # (M, 3)
        low_res = out.pred_masks[0].float()  # (M, 3, S/4, S/4)
        chosen = iou.argmax(dim=1)
        best = low_res[torch.arange(len(chosen), device=low_res.device), chosen]
        logits = F.interpolate(best[:, None], emb.original_size, mode="bilinear", align_corners=False)[:, 0]
        if self.host_post:
            values = logits.cpu().numpy()
            masks = values > MASK_THRESHOLD
            inter = np.count_nonzero(values > MASK_THRESHOLD + STABILITY_OFFSET, axis=(1, 2)).astype(np.float32)
            union = np.count_nonzero(values > MASK_THRESHOLD - STABILITY_OFFSET, axis=(1, 2)).astype(np.float32)
            stability = np.where(union > 0, inter / np.maximum(union, 1), 0).astype(np.float32)
            return MaskPrediction(masks, iou.cpu().numpy().astype(np.float32), chosen.cpu().numpy(), stability)
        inter_t = (logits > MASK_THRESHOLD + STABILITY_OFFSET).sum(dim=(1, 2)).float()
        union_t = (logits > MASK_THRESHOLD - STABILITY_OFFSET).sum(dim=(1, 2)).float()
        stab_t = torch.where(union_t > 0, inter_t / union_t.clamp(min=1), torch.zeros_like(union_t))
        small = torch.cat([iou, chosen[:, None].float(), stab_t[:, None]], dim=1).cpu().numpy()
        return MaskPrediction(
            (logits > MASK_THRESHOLD).cpu().numpy(),
            small[:, :-2].astype(np.float32),
            small[:, -2].astype(np.int64),
            small[:, -1].astype(np.float32),
        )


def load_sam2(model: str, checkpoint: HfCheckpoint | None) -> torch.nn.Module:
    """Build ``model``'s ``Sam2Model``: from a Hugging Face directory's ``config.json`` and weights (checked against
    the model's architecture first), or with seeded random weights (``None``: the same in every process)."""
    from safetensors.torch import load as load_safetensors
    from transformers import Sam2Config, Sam2Model

    from pixelperfect.pipeline.model.sam2_family import sam2_config

    if checkpoint is None:
        torch.manual_seed(INIT_SEED)
        return Sam2Model(sam2_config(model)).eval()
    check_sam2_checkpoint(model, checkpoint)
    fields = {k: v for k, v in checkpoint.config.items() if k not in ("architectures", "transformers_version")}
    net = Sam2Model(Sam2Config(**fields))
    state: dict[str, torch.Tensor] = {}
    for name, data in sorted(checkpoint.files.items()):
        try:
            state.update(load_safetensors(data))
        except Exception as exc:
            raise CheckpointError(f"{name} does not load as safetensors: {exc}") from None
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise CheckpointError(f"checkpoint does not fit the {model} architecture: {first}") from None
    return net.eval()


def tie_positional_embeddings(model: Any) -> Any:
    """A random ``Sam2Model`` draws the image's and the prompts' random-Fourier matrices separately; in every real
    checkpoint they are one (Meta's ``pe_layer``), or a box would be encoded in another basis than the image.
    Copies the image's matrix into the prompt encoder's (in place) and returns ``model``."""
    with torch.no_grad():
        model.prompt_encoder.shared_embedding.positional_embedding.copy_(
            model.shared_image_embedding.positional_embedding
        )
    return model


def seeded_sam2(model: str, seed: int) -> torch.nn.Module:
    """``model``'s ``Sam2Model`` with weights drawn by numpy (the same bytes on every CPU) at scales that make
    its outputs depend on the image and the prompt: ``transformers``' own initialiser (normal, std 0.02) gives
    predicted IoUs of 0.5 ± 1e-4 for any box, which no test of coordinates could tell apart.

    Each tensor has its own ``numpy.random.default_rng([seed, crc32(name)])``; weights of linear and convolution
    layers are uniform with unit output variance (``±sqrt(3 / fan_in)``), biases ``±0.1``, norms one and zero,
    every other tensor (embeddings, positional and "no memory" tokens) uniform ``±0.5``; the prompt encoder's
    positional matrix is then the image's (:func:`tie_positional_embeddings`), as in every real checkpoint.
    """
    import math
    import zlib

    from transformers import Sam2Model

    from pixelperfect.pipeline.model.sam2_family import sam2_config

    net = Sam2Model(sam2_config(model))
    owners = dict(net.named_modules())
    state = net.state_dict()
    for name, tensor in state.items():
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        shape = tuple(tensor.shape)
        owner, leaf = name.rsplit(".", 1) if "." in name else ("", name)
        kind = type(owners.get(owner)).__name__
        if "Norm" in kind:
            values = np.full(shape, 1.0 if leaf == "weight" else 0.0)
        elif kind in ("Linear", "Conv2d", "ConvTranspose2d") and leaf == "bias":
            values = rng.uniform(-0.1, 0.1, shape)
        elif kind in ("Linear", "Conv2d", "ConvTranspose2d"):
            fan_in = shape[0] if kind == "ConvTranspose2d" else math.prod(shape[1:])
            bound = math.sqrt(3.0 / fan_in)
            values = rng.uniform(-bound, bound, shape)
        else:
            values = rng.uniform(-0.5, 0.5, shape)
        state[name] = torch.from_numpy(np.array(values, np.float32))
    net.load_state_dict(state, strict=True)
    return tie_positional_embeddings(net).eval()
