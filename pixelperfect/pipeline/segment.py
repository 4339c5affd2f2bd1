"""Box-prompted segmenters behind one interface: SAM (batched encoder, prompts batched per image) and GrabCut.

Encode once, prompt many: :meth:`Segmenter.encode` turns a list of preprocessed images into embeddings (one
encoder pass per chunk of images); :meth:`Segmenter.predict_boxes` decodes any number of boxes on one embedding
in a single call — the ground-truth prompts and their perturbations together.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import cv2
import numpy as np
import torch

#: segment-anything's automatic generator uses an offset of 1.0 on the mask logits for its stability score.
STABILITY_OFFSET = 1.0


@dataclass
class BoxPrediction:
    """Masks for ``M`` boxes on an image of ``(H, W)`` pixels.

    ``masks``: ``(M, H, W)`` bool, the chosen mask per box (highest predicted IoU). ``scores``: ``(M, C)``
    float32 predicted IoUs of all ``C`` candidate masks (``C = 3`` for SAM; NaN where a model has none).
    ``chosen``: ``(M,)`` int index of the chosen candidate. ``stability``: ``(M,)`` float32, IoU of the chosen
    mask's logits thresholded at ``±STABILITY_OFFSET`` (NaN for models without logits).
    """

    masks: np.ndarray
    scores: np.ndarray
    chosen: np.ndarray
    stability: np.ndarray

    @property
    def best_scores(self) -> np.ndarray:
        return self.scores[np.arange(len(self.chosen)), self.chosen]


class Segmenter(Protocol):
    name: str

    def encode(self, images: Sequence[np.ndarray]) -> list[Any]:
        """``images``: ``(H, W) uint8`` preprocessed greyscale. Returns one opaque embedding per image."""

    def predict_boxes(self, embedding: Any, boxes: np.ndarray) -> BoxPrediction:
        """``boxes``: ``(M, 4)`` float XYXY in the image's own pixel coordinates."""


@dataclass
class SamEmbedding:
    features: torch.Tensor  # (C, h, w) on the model's device
    original_size: tuple[int, int]  # (H, W)
    input_size: tuple[int, int]  # (h, w) after resizing the long side to the encoder's input size


class SamSegmenter:
    """A ``segment_anything`` :class:`Sam` on one device; bf16 autocast on CUDA unless fp32 is asked for."""

    def __init__(
        self,
        sam: torch.nn.Module,
        device: torch.device,
        *,
        name: str,
        encoder_batch: int = 8,
        precision: str = "auto",
    ) -> None:
        from segment_anything.utils.transforms import ResizeLongestSide

        if encoder_batch < 1:
            raise ValueError(f"encoder_batch must be >= 1, got {encoder_batch}")
        if precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"precision must be auto, fp32 or bf16, got {precision!r}")
        self.name = name
        self.device = device
        self.sam: Any = sam.to(device).eval()
        self.encoder_batch = encoder_batch
        self.img_size = int(sam.image_encoder.img_size)  # type: ignore[union-attr,arg-type]
        self.transform = ResizeLongestSide(self.img_size)
        self.bf16 = device.type == "cuda" and precision != "fp32"
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.bf16:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _to_input(self, image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        rgb = np.repeat(image[:, :, None], 3, axis=2) if image.ndim == 2 else image
        resized = self.transform.apply_image(rgb)
        tensor = torch.from_numpy(resized).permute(2, 0, 1).contiguous()
        if self.device.type == "cuda":
            tensor = tensor.pin_memory()
        return tensor.to(self.device, non_blocking=True), (resized.shape[0], resized.shape[1])

    @torch.inference_mode()
    def encode(self, images: Sequence[np.ndarray]) -> list[Any]:
        out: list[Any] = []
        for start in range(0, len(images), self.encoder_batch):
            chunk = images[start : start + self.encoder_batch]
            inputs = [self._to_input(img) for img in chunk]
            batch = torch.stack([self.sam.preprocess(t[None].float())[0] for t, _ in inputs])
            with self._autocast():
                features = self.sam.image_encoder(batch)
            for img, (_, input_size), feat in zip(chunk, inputs, features, strict=True):
                out.append(SamEmbedding(feat.float(), (img.shape[0], img.shape[1]), input_size))
        return out

    @torch.inference_mode()
    def predict_boxes(self, embedding: Any, boxes: np.ndarray) -> BoxPrediction:
        emb: SamEmbedding = embedding
        height, width = emb.original_size
        if len(boxes) == 0:
            return BoxPrediction(
                np.zeros((0, height, width), bool),
                np.zeros((0, 3), np.float32),
                np.zeros(0, np.int64),
                np.zeros(0, np.float32),
            )
        box_t = torch.as_tensor(np.asarray(boxes, np.float32), device=self.device)
        box_t = self.transform.apply_boxes_torch(box_t, emb.original_size)
        with self._autocast():
            sparse, dense = self.sam.prompt_encoder(points=None, boxes=box_t, masks=None)
            low_res, iou = self.sam.mask_decoder(
                image_embeddings=emb.features[None].to(sparse.dtype),
                image_pe=self.sam.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=True,
            )
        iou = iou.float()
        chosen = iou.argmax(dim=1)
        best = low_res.float()[torch.arange(len(chosen), device=self.device), chosen]
        logits = self.sam.postprocess_masks(best[:, None], emb.input_size, emb.original_size)[:, 0]
        threshold = float(self.sam.mask_threshold)
        masks = logits > threshold
        inter = (logits > threshold + STABILITY_OFFSET).flatten(1).sum(1).float()
        union = (logits > threshold - STABILITY_OFFSET).flatten(1).sum(1).float()
        stability = torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(union))
        # one device->host copy per image, after all prompts are decoded
        return BoxPrediction(
            masks.cpu().numpy(),
            iou.cpu().numpy().astype(np.float32),
            chosen.cpu().numpy(),
            stability.cpu().numpy().astype(np.float32),
        )


class GrabCutSegmenter:
    """The classical baseline: OpenCV GrabCut initialised with the box (no learned prior, no confidence).

    Runs at most at ``work_size`` pixels on the long side (GrabCut's cost grows with the pixel count) and scales
    the mask back; scores and stability are NaN.
    """

    name = "grabcut"

    def __init__(self, iterations: int = 3, work_size: int = 512) -> None:
        if iterations < 1:
            raise ValueError(f"grabcut iterations must be >= 1, got {iterations}")
        if work_size < 64:
            raise ValueError(f"grabcut work_size must be >= 64, got {work_size}")
        self.iterations, self.work_size = iterations, work_size

    def encode(self, images: Sequence[np.ndarray]) -> list[Any]:
        return list(images)

    def predict_boxes(self, embedding: Any, boxes: np.ndarray) -> BoxPrediction:
        image: np.ndarray = embedding
        height, width = image.shape[:2]
        scale = min(1.0, self.work_size / max(height, width))
        small = cv2.resize(image, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA)
        bgr = cv2.cvtColor(small, cv2.COLOR_GRAY2BGR) if small.ndim == 2 else small
        masks = np.zeros((len(boxes), height, width), bool)
        for i, mask_small in enumerate(self._cut(bgr, np.asarray(boxes, np.float64) * scale)):
            masks[i] = cv2.resize(mask_small.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST) > 0
        n = len(boxes)
        return BoxPrediction(
            masks, np.full((n, 1), np.nan, np.float32), np.zeros(n, np.int64), np.full(n, np.nan, np.float32)
        )

    def _cut(self, bgr: np.ndarray, boxes: np.ndarray) -> Iterator[np.ndarray]:
        h, w = bgr.shape[:2]
        for x1, y1, x2, y2 in boxes:
            x1c, y1c = int(np.clip(np.floor(x1), 0, w - 1)), int(np.clip(np.floor(y1), 0, h - 1))
            x2c, y2c = int(np.clip(np.ceil(x2), x1c + 1, w)), int(np.clip(np.ceil(y2), y1c + 1, h))
            rect = (x1c, y1c, x2c - x1c, y2c - y1c)
            if rect[2] < 3 or rect[3] < 3:
                out = np.zeros((h, w), bool)
                out[y1c:y2c, x1c:x2c] = True
                yield out
                continue
            mask = np.zeros((h, w), np.uint8)
            bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
            cv2.setRNGSeed(0)  # GrabCut initialises its GMMs with k-means: seed it for repeatable masks
            try:
                cv2.grabCut(bgr, mask, rect, bgd, fgd, self.iterations, cv2.GC_INIT_WITH_RECT)
            except cv2.error:  # a flat box region has no foreground model to fit
                yield np.zeros((h, w), bool)
                continue
            yield (mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)


def build_segmenter(
    model: str,
    checkpoint_bytes: bytes | None,
    device: str = "auto",
    *,
    encoder_batch: int = 8,
    precision: str = "auto",
) -> Segmenter:
    """The segmenter for ``model``; loads weights once (call it once per worker process)."""
    if model == "grabcut":
        return GrabCutSegmenter()
    from pixelperfect.pipeline.models import load_sam, resolve_device

    sam = load_sam(model, checkpoint_bytes)
    return SamSegmenter(sam, resolve_device(device), name=model, encoder_batch=encoder_batch, precision=precision)
