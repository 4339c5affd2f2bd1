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
import torch.nn.functional as F

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

    def encode(self, images: Sequence[Any]) -> list[Any]:
        """``images``: ``(H, W) uint8`` preprocessed greyscale, or what :func:`prepare_input` made of them (the
        worker prepares images on its I/O threads). Returns one opaque embedding per image."""

    def predict_boxes(self, embedding: Any, boxes: np.ndarray) -> BoxPrediction:
        """``boxes``: ``(M, 4)`` float XYXY in the image's own pixel coordinates."""

    def predict_points(self, embedding: Any, points: np.ndarray, labels: np.ndarray) -> BoxPrediction:
        """``points``: ``(M, P, 2)`` float XY; ``labels``: ``(M, P)`` int, 1 foreground / 0 background."""


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
    for bf16 on either (on a CPU only worth it with AVX512-BF16/AMX: ViT-B at 1024² took 4.7 s instead of 16.4 s
    per image on this project's 2-core AVX512-BF16 VM); ``fp32`` never casts. The prompt encoder and mask decoder
    always run in fp32 (TF32 matmuls on CUDA): they cost a few per cent of the encoder, and the mask boundaries
    come from them. With ViT-B (random weights) on 1024² phantoms, bf16 everywhere agreed with fp32 at mean mask
    IoU 0.983 (minimum 0.976), a bf16 encoder with an fp32 decoder at 0.992 (minimum 0.991), CPU autocast.

    ``compile_encoder`` wraps the image encoder in ``torch.compile`` (static shapes: every chunk is padded to
    ``encoder_batch``, so it compiles once). Its cold start is paid on the first batch of each worker process:
    tens of seconds for ViT-B on a GPU (bench/gpu.sh measures it), nothing afterwards.
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
        self.bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
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

    def prepare(self, image: np.ndarray) -> SamInput:
        """``(H, W)`` or ``(H, W, 3)`` uint8 -> :class:`SamInput`. CPU only and thread-safe: the worker calls it on
        its I/O threads while the device encodes the previous images. Resizing is segment-anything's own
        (``ResizeLongestSide``), skipped when the long side already has the input size."""
        height, width = image.shape[:2]
        target = self.transform.get_preprocess_shape(height, width, self.img_size)
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
    def predict_boxes(self, embedding: Any, boxes: np.ndarray) -> BoxPrediction:
        emb: SamEmbedding = embedding
        if len(boxes) == 0:
            return _empty_prediction(*emb.original_size)
        box_t = torch.as_tensor(np.asarray(boxes, np.float32), device=self.device)
        box_t = self.transform.apply_boxes_torch(box_t, emb.original_size)
        sparse, dense = self.sam.prompt_encoder(points=None, boxes=box_t, masks=None)
        return self._decode(emb, sparse, dense)

    @torch.inference_mode()
    def predict_points(self, embedding: Any, points: np.ndarray, labels: np.ndarray) -> BoxPrediction:
        """Point prompts: ``points`` ``(M, P, 2)`` float XY in the image's own pixel coordinates, ``labels``
        ``(M, P)`` int (1 foreground, 0 background); one prompt per row, all decoded in one call. As for boxes,
        the candidate with the highest predicted IoU is kept.
        """
        emb: SamEmbedding = embedding
        pts = np.asarray(points, np.float32).reshape(len(points), -1, 2)
        if len(pts) == 0:
            return _empty_prediction(*emb.original_size)
        coords = self.transform.apply_coords_torch(torch.as_tensor(pts, device=self.device), emb.original_size)
        lab = torch.as_tensor(np.asarray(labels).reshape(len(pts), -1), dtype=torch.int, device=self.device)
        sparse, dense = self.sam.prompt_encoder(points=(coords, lab), boxes=None, masks=None)
        return self._decode(emb, sparse, dense)

    def _decode(self, emb: SamEmbedding, sparse: torch.Tensor, dense: torch.Tensor) -> BoxPrediction:
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
        if self.device.type == "cpu":  # numpy thresholds and counts ~10x faster than torch's on CPU tensors
            values = logits.numpy()
            masks = values > threshold
            inter = np.count_nonzero(values > threshold + STABILITY_OFFSET, axis=(1, 2)).astype(np.float32)
            union = np.count_nonzero(values > threshold - STABILITY_OFFSET, axis=(1, 2)).astype(np.float32)
            stability = np.where(union > 0, inter / np.maximum(union, 1), 0).astype(np.float32)
            return BoxPrediction(masks, iou.numpy().astype(np.float32), chosen.numpy(), stability)
        inter_t = (logits > threshold + STABILITY_OFFSET).flatten(1).sum(1).float()
        union_t = (logits > threshold - STABILITY_OFFSET).flatten(1).sum(1).float()
        stab_t = torch.where(union_t > 0, inter_t / union_t.clamp(min=1), torch.zeros_like(union_t))
        small = torch.cat([iou, chosen[:, None].float(), stab_t[:, None]], dim=1).cpu().numpy()  # one small copy
        return BoxPrediction(
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


def _empty_prediction(height: int, width: int) -> BoxPrediction:
    return BoxPrediction(
        np.zeros((0, height, width), bool),
        np.zeros((0, 3), np.float32),
        np.zeros(0, np.int64),
        np.zeros(0, np.float32),
    )


def prepare_input(segmenter: Any, image: np.ndarray) -> Any:
    """The segmenter's CPU-side input for ``image`` (its ``prepare`` when it has one, else the array itself)."""
    prepare = getattr(segmenter, "prepare", None)
    return prepare(image) if prepare is not None else image


class GrabCutSegmenter:
    """The classical baseline: OpenCV GrabCut initialised with the box (no learned prior, no confidence).

    Runs at most at ``work_size`` pixels on the long side (GrabCut's cost grows with the pixel count) and scales
    the mask back; scores and stability are NaN.
    """

    name = "grabcut"
    POINT_BOX_FRACTION = 0.25  # a point prompt becomes a box a quarter of the image's shorter side wide

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

    def predict_points(self, embedding: Any, points: np.ndarray, labels: np.ndarray) -> BoxPrediction:
        """Point prompts for the baseline: GrabCut needs a rectangle, so each prompt's first foreground point
        becomes a square box of side ``POINT_BOX_FRACTION`` x the image's shorter side (background points are
        ignored). A crude baseline, documented as such.
        """
        image: np.ndarray = embedding
        height, width = image.shape[:2]
        pts = np.asarray(points, np.float64).reshape(len(points), -1, 2)
        lab = np.asarray(labels).reshape(len(pts), -1)
        half = self.POINT_BOX_FRACTION * min(height, width) / 2
        boxes = np.zeros((len(pts), 4))
        for i, (p, lb) in enumerate(zip(pts, lab, strict=True)):
            x, y = p[int(np.argmax(lb == 1))] if (lb == 1).any() else p[0]
            boxes[i] = [max(x - half, 0), max(y - half, 0), min(x + half, width), min(y + half, height)]
        return self.predict_boxes(embedding, boxes)

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
    compile_encoder: bool = False,
) -> Segmenter:
    """The segmenter for ``model``; loads weights once (call it once per worker process)."""
    if model == "grabcut":
        return GrabCutSegmenter()
    from pixelperfect.pipeline.models import load_sam, resolve_device

    sam = load_sam(model, checkpoint_bytes)
    return SamSegmenter(
        sam,
        resolve_device(device),
        name=model,
        encoder_batch=encoder_batch,
        precision=precision,
        compile_encoder=compile_encoder,
    )
