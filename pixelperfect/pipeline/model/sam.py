"""SAM behind the :class:`~pixelperfect.pipeline.model.grabcut.Segmenter` interface: a batched image encoder (bf16 on
CUDA), all prompts of an image decoded in one call, inputs prepared on CPU threads in pinned memory."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.utils.amg import calculate_stability_score

from pixelperfect.pipeline.model.protocol import STABILITY_OFFSET, MaskPrediction, check_options, empty_prediction


@dataclass
class SamEmbedding:
    features: torch.Tensor  # (C, h, w) on the model's device
    original_size: tuple[int, int]  # (H, W)
    input_size: tuple[int, int]  # (h, w) after resizing the long side to the encoder's input size


@dataclass
class SamInput:
    """An image made ready for the encoder on a CPU thread (:meth:`SamSegmenter.prepare`).

    ``pixels``: ``(h, w)`` or ``(h, w, 3)`` uint8 CPU tensor, resized so the long side is the encoder's input size
    (pinned host memory on CUDA, so the copy to the device is asynchronous); ``original_size``: ``(H, W)``.
    """

    pixels: torch.Tensor
    original_size: tuple[int, int]


class SamSegmenter:
    """A ``segment_anything`` :class:`Sam` on one device.

    ``precision``: ``auto`` runs the image encoder under bf16 autocast on CUDA and in fp32 on a CPU; ``bf16`` asks
    for bf16 on either (on a CPU only worth it with AVX512-BF16/AMX: ViT-B at 1024² took 3.8 s instead of 9.6 s
    per image on this project's 2-core AVX512-BF16 VM, ``bench/p8_cpu_bf16.py``); ``fp32`` never casts. The prompt
    encoder and mask decoder always run in fp32 (TF32 matmuls on CUDA): they cost a few per cent of the encoder,
    and the mask boundaries come from them. With ViT-B (random weights) on 1024² phantoms, bf16 everywhere agreed
    with fp32 at mean mask IoU 0.983 (minimum 0.976), a bf16 encoder with an fp32 decoder at 0.992 (minimum 0.991),
    CPU autocast.

    ``compile_encoder`` wraps the image encoder in ``torch.compile`` (static shapes: every chunk is padded to
    ``encoder_batch``, so it compiles once). Its cold start is paid on the first batch of each worker process:
    tens of seconds for ViT-B on a GPU (bench/gpu.sh measures it), nothing afterwards.

    ``host_post``: threshold the logits and count stability in numpy on the host (on a CPU ~10x faster than
    torch's CPU kernels), or in torch where the logits are (on CUDA: one small copy back). ``None`` (the default)
    picks numpy exactly when the device is a CPU; either path gives the same masks and scores.
    """

    def __init__(
        self,
        sam: torch.nn.Module,
        device: torch.device,
        *,
        name: str,
        encoder_batch: int = 8,
        precision: str = "auto",
        compile_encoder: bool = False,
        host_post: bool | None = None,
    ) -> None:
        from segment_anything.utils.transforms import ResizeLongestSide

        check_options(encoder_batch, precision)
        self.name = name
        self.device = device
        self.sam: Any = sam.to(device).eval()
        self.encoder_batch = encoder_batch
        self.img_size = int(sam.image_encoder.img_size)  # type: ignore[union-attr,arg-type]
        self.transform = ResizeLongestSide(self.img_size)
        self.bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
        self.host_post = device.type == "cpu" if host_post is None else bool(host_post)
        self.compiled = compile_encoder
        encoder: Any = self.sam.image_encoder
        self._encoder: Any = torch.compile(encoder, dynamic=False) if compile_encoder else None
        if device.type == "cuda":
            torch.set_float32_matmul_precision("high")  # TF32 matmuls where fp32 remains
            torch.backends.cudnn.allow_tf32 = True

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The image encoder's autocast: bf16 on this segmenter's device when :attr:`bf16`, else nothing."""
        if self.bf16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def prepare(self, image: np.ndarray, original_size: tuple[int, int] | None = None) -> SamInput:
        """``(H, W)`` or ``(H, W, 3)`` uint8 -> :class:`SamInput`. CPU only and thread-safe: the worker calls it on
        its I/O threads while the device encodes the previous images. Resizing is segment-anything's own
        (``ResizeLongestSide``), skipped when the long side already has the input size.

        ``original_size``: ``(H, W)`` of the full-resolution image when ``image`` is a reduced decode of it; the
        input is then resized to the size the full image would have had, and boxes, points and masks refer to
        the full image's grid (masks are up-sampled to it)."""
        height, width = original_size or image.shape[:2]
        target = self.transform.get_preprocess_shape(height, width, self.img_size)
        if original_size is not None and image.shape[:2] != target:
            from torchvision.transforms.functional import resize, to_pil_image  # as ResizeLongestSide does

            resized = np.array(resize(to_pil_image(image), list(target)))
        else:
            resized = image if (height, width) == target else self.transform.apply_image(image)
        tensor = torch.from_numpy(np.ascontiguousarray(resized))
        if self.device.type == "cuda":
            tensor = tensor.pin_memory()
        return SamInput(tensor, (height, width))

    def _normalised(self, item: SamInput) -> torch.Tensor:
        """Device copy (async from pinned memory), grey -> 3 channels, SAM's normalisation and padding."""
        pixels = item.pixels.to(self.device, non_blocking=True)
        chw = pixels[None].expand(3, -1, -1) if pixels.ndim == 2 else pixels.permute(2, 0, 1)
        return self.sam.preprocess(chw.float())  # type: ignore[no-any-return]

    @torch.inference_mode()
    def encode(self, images: Sequence[Any]) -> list[Any]:
        """``images``: ``(H, W)`` uint8 arrays or :class:`SamInput` from :meth:`prepare`. One encoder pass per
        chunk of ``encoder_batch`` images; returns one :class:`SamEmbedding` per image."""
        items = [img if isinstance(img, SamInput) else self.prepare(img) for img in images]
        out: list[Any] = []
        for start in range(0, len(items), self.encoder_batch):
            chunk = items[start : start + self.encoder_batch]
            batch = torch.stack([self._normalised(item) for item in chunk])
            if self._encoder is not None and len(chunk) < self.encoder_batch:  # one static shape: compile once
                batch = torch.cat([batch, batch.new_zeros((self.encoder_batch - len(chunk), *batch.shape[1:]))])
            with self.autocast():
                features = (self._encoder if self._encoder is not None else self.sam.image_encoder)(batch)
            for item, feat in zip(chunk, features, strict=False):
                input_size = (int(item.pixels.shape[0]), int(item.pixels.shape[1]))
                out.append(SamEmbedding(feat.float(), item.original_size, input_size))
        return out

    @torch.inference_mode()
    def predict_boxes(self, embedding: Any, boxes: np.ndarray) -> MaskPrediction:
        emb: SamEmbedding = embedding
        if len(boxes) == 0:
            return empty_prediction(*emb.original_size)
        box_t = torch.as_tensor(np.asarray(boxes, np.float32), device=self.device)
        box_t = self.transform.apply_boxes_torch(box_t, emb.original_size)
        sparse, dense = self.sam.prompt_encoder(points=None, boxes=box_t, masks=None)
        return self._decode(emb, sparse, dense)

    @torch.inference_mode()
    def predict_points(self, embedding: Any, points: np.ndarray, labels: np.ndarray) -> MaskPrediction:
        """Point prompts: ``points`` ``(M, P, 2)`` float XY in the image's own pixel coordinates, ``labels``
        ``(M, P)`` int (1 foreground, 0 background); one prompt per row, all decoded in one call. As for boxes,
        the candidate with the highest predicted IoU is kept.
        """
        emb: SamEmbedding = embedding
        pts = np.asarray(points, np.float32).reshape(len(points), -1, 2)
        if len(pts) == 0:
            return empty_prediction(*emb.original_size)
        coords = self.transform.apply_coords_torch(torch.as_tensor(pts, device=self.device), emb.original_size)
        lab = torch.as_tensor(np.asarray(labels).reshape(len(pts), -1), dtype=torch.int, device=self.device)
        sparse, dense = self.sam.prompt_encoder(points=(coords, lab), boxes=None, masks=None)
        return self._decode(emb, sparse, dense)

    def _decode(self, emb: SamEmbedding, sparse: torch.Tensor, dense: torch.Tensor) -> MaskPrediction:
        """All prompts of one image in one decoder call; the device work is queued without a host sync until the
        results are copied back, once per image (never per prompt)."""
        low_res, iou = self.sam.mask_decoder(  # fp32: see the class docstring
            image_embeddings=emb.features[None].float(),
            image_pe=self.sam.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=True,
        )
        iou = iou.float()
        chosen = iou.argmax(dim=1)
        best = low_res.float()[torch.arange(len(chosen), device=self.device), chosen]
        logits = self._upscale(best[:, None], emb.input_size, emb.original_size)[:, 0]
        threshold = float(self.sam.mask_threshold)
        if self.host_post:  # amg.calculate_stability_score's counts, in numpy: ~10x faster than torch on a CPU
            values = logits.numpy()
            masks = values > threshold
            inter = np.count_nonzero(values > threshold + STABILITY_OFFSET, axis=(1, 2)).astype(np.float32)
            union = np.count_nonzero(values > threshold - STABILITY_OFFSET, axis=(1, 2)).astype(np.float32)
            stability = np.where(union > 0, inter / np.maximum(union, 1), 0).astype(np.float32)
            return MaskPrediction(masks, iou.numpy().astype(np.float32), chosen.numpy(), stability)
        # segment-anything's own score; 0 (not its NaN) for a mask empty at the low threshold, as on the host path
        stab_t = torch.nan_to_num(calculate_stability_score(logits, threshold, STABILITY_OFFSET).float(), nan=0.0)
        small = torch.cat([iou, chosen[:, None].float(), stab_t[:, None]], dim=1).cpu().numpy()  # one small copy
        return MaskPrediction(
            (logits > threshold).cpu().numpy(),
            small[:, :-2].astype(np.float32),
            small[:, -2].astype(np.int64),
            small[:, -1].astype(np.float32),
        )

    def _upscale(
        self, low_res: torch.Tensor, input_size: tuple[int, int], original_size: tuple[int, int]
    ) -> torch.Tensor:
        """``Sam.postprocess_masks`` without its second interpolation when it would be the identity (input already
        at the encoder's size: bilinear resampling to the same size returns the values unchanged)."""
        masks = F.interpolate(low_res, (self.img_size, self.img_size), mode="bilinear", align_corners=False)
        masks = masks[..., : input_size[0], : input_size[1]]
        if tuple(input_size) != tuple(original_size):
            masks = F.interpolate(masks, original_size, mode="bilinear", align_corners=False)
        return masks
