"""SAM 3 (Meta, November 2025) through ``transformers``' ``Sam3Model``: promptable concept segmentation.

A noun phrase ("lung opacity") and optionally exemplar boxes (positive and negative) give every instance of the
concept in an image, each with a mask, a box and a presence-aware score. The model's parts are used at the
granularity the pipeline needs:

- vision: :meth:`Sam3Segmenter.encode` runs ``get_vision_features`` on groups of ``encoder_batch`` images (the
  preprocessing is the library's own ``Sam3ImageProcessor``: resize to the model's square input, ImageNet-standard
  normalisation; a grey film is repeated into three channels);
- text: :meth:`Sam3Segmenter.text_embeddings` runs ``get_text_features`` once per phrase for the life of the
  segmenter (a worker process: once per run and process) and caches the result;
- decoding: :meth:`Sam3Segmenter.predict_concepts` decodes all phrases of one image in one forward pass (the
  image's vision features broadcast over a batch of phrases; exemplar boxes, if any, join every phrase).

Each instance's score is ``sigmoid(logit) * sigmoid(presence logit)``, as ``Sam3Processor``'s
``post_process_instance_segmentation`` computes it, and its mask is that function's: the sigmoid of the mask
logits resized bilinearly to the image, above 0.5. The stability is SAM's: the IoU of the low-resolution mask
logits thresholded at ``+1`` and ``-1`` (:data:`~pixelperfect.pipeline.model.protocol.STABILITY_OFFSET`).

The weights come as the files of a Hugging Face directory (:mod:`pixelperfect.pipeline.model.sam3_files`), read by
the worker and handed over as bytes: nothing here opens a file.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pixelperfect.pipeline.model.protocol import STABILITY_OFFSET, MaskPrediction
from pixelperfect.pipeline.model.sam3_files import (
    CONFIG_FILE,
    WEIGHT_SUFFIX,
    Sam3FilesError,
    build_tokenizer,
    check_names,
    check_phrase,
    detector_config,
)
from pixelperfect.pipeline.options import CONCEPT_MAX_TOKENS

#: Key prefixes of a ``sam3_video`` checkpoint: the detector's weights, and the tracker's (not used here).
_DETECTOR_PREFIX = "detector_model."
_TRACKER_PREFIXES = ("tracker_model.", "tracker_neck.")


@dataclass
class Sam3Input:
    """One image ready for the vision encoder: ``pixel_values`` ``(3, S, S)`` float32 and the ``(H, W)`` the
    masks and boxes refer to (the original's, also when the decode was reduced)."""

    pixel_values: torch.Tensor
    size: tuple[int, int]


@dataclass
class Sam3Embedding:
    """One image's vision features (each tensor ``(1, C, h, w)``) and its ``(H, W)``."""

    fpn_hidden_states: tuple[torch.Tensor, ...]
    fpn_position_encoding: tuple[torch.Tensor, ...]
    size: tuple[int, int]


@dataclass
class ConceptInstances:
    """The instances of one image for a list of phrases: ``masks`` ``(N, H, W)`` bool, ``scores`` ``(N,)``
    float32, ``boxes`` ``(N, 4)`` float64 XYXY pixels, ``stability`` ``(N,)`` float32 and ``phrase`` ``(N,)`` the
    index of each instance's phrase; phrase by phrase, best score first within a phrase."""

    masks: np.ndarray
    scores: np.ndarray
    boxes: np.ndarray
    stability: np.ndarray
    phrase: np.ndarray

    @classmethod
    def empty(cls, height: int, width: int) -> ConceptInstances:
        return cls(
            np.zeros((0, height, width), bool),
            np.zeros(0, np.float32),
            np.zeros((0, 4)),
            np.zeros(0, np.float32),
            np.zeros(0, np.int64),
        )

    def __len__(self) -> int:
        return len(self.scores)

    def as_mask_prediction(self) -> MaskPrediction:
        """The instances in the protocol's layout: one candidate per instance, its score as that candidate's."""
        n = len(self)
        return MaskPrediction(self.masks, self.scores.reshape(n, 1), np.zeros(n, np.int64), self.stability)


def load_sam3(files: Mapping[str, bytes]) -> tuple[Any, Any]:
    """``Sam3Model`` and its CLIP tokenizer from a Hugging Face directory's files ``{base name: bytes}``.

    Raises :class:`~pixelperfect.pipeline.model.sam3_files.Sam3FilesError` for a missing file, another model, a
    model without a text encoder, or weights that do not fit the configuration."""
    from safetensors.torch import load as load_safetensors
    from transformers import Sam3Config, Sam3Model

    check_names(files)
    config = Sam3Config.from_dict(detector_config(files[CONFIG_FILE]))
    tokenizer = build_tokenizer(files)
    model = Sam3Model(config)
    state: dict[str, torch.Tensor] = {}
    for name in sorted(n for n in files if n.endswith(WEIGHT_SUFFIX)):
        for key, tensor in load_safetensors(files[name]).items():
            if key.startswith(_TRACKER_PREFIXES):
                continue
            state[key.removeprefix(_DETECTOR_PREFIX)] = tensor
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise Sam3FilesError(
            f"the weights do not fit config.json's SAM 3: {len(missing)} missing (e.g. {missing[:2]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:2]})"
        )
    return model.eval(), tokenizer


def build_sam3(files: Any, device: str = "auto", *, encoder_batch: int = 8, precision: str = "auto") -> Sam3Segmenter:
    """The ``sam3`` segmenter from its directory's files (``{base name: bytes}``), loaded once per process."""
    from pixelperfect.pipeline.model.weights import resolve_device

    if not isinstance(files, Mapping):
        raise Sam3FilesError("model sam3 needs its Hugging Face directory (--checkpoint DIR), not a single file")
    model, tokenizer = load_sam3(files)
    return Sam3Segmenter(model, tokenizer, resolve_device(device), encoder_batch=encoder_batch, precision=precision)


def sam3_file_bytes(model: Any, tokenizer_files: Mapping[str, bytes]) -> dict[str, bytes]:
    """A ``Sam3Model``'s directory as ``{name: bytes}`` (``config.json``, ``model.safetensors``, the tokenizer
    files given): what :func:`load_sam3` reads. For tests and benchmarks with random weights."""
    from safetensors.torch import save as save_safetensors

    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    return {
        CONFIG_FILE: json.dumps(model.config.to_dict()).encode(),
        f"model{WEIGHT_SUFFIX}": save_safetensors(state),
        **tokenizer_files,
    }


class Sam3Segmenter:
    """The :class:`~pixelperfect.pipeline.model.protocol.Segmenter` of SAM 3: concept prompts only (no box or
    point prompts: ``submit`` refuses them for this model). ``vision_calls`` / ``vision_images`` /
    ``text_calls`` / ``text_phrases`` / ``decode_calls`` count the model's work (tests and benchmarks read them)."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        device: torch.device,
        *,
        name: str = "sam3",
        encoder_batch: int = 8,
        precision: str = "auto",
    ) -> None:
        try:
            from transformers import Sam3ImageProcessor
        except ImportError:  # transformers releases before the processors' backends were merged name it so
            from transformers import Sam3ImageProcessorFast as Sam3ImageProcessor  # type: ignore[no-redef,attr-defined]

        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.device = device
        self.name = name
        self.encoder_batch = max(1, int(encoder_batch))
        side = int(model.config.vision_config.image_size)
        self.img_size = side
        self.processor = Sam3ImageProcessor(size={"height": side, "width": side})
        self.bf16 = device.type == "cuda" and precision in ("auto", "bf16")
        self._text: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.vision_calls = self.vision_images = self.text_calls = self.text_phrases = self.decode_calls = 0

    # --- vision ---------------------------------------------------------------------------------------------

    def prepare(self, image: np.ndarray, original_size: tuple[int, int] | None = None) -> Sam3Input:
        """CPU side: the library's preprocessing of the grey ``(H, W)`` uint8 image repeated into RGB."""
        rgb = np.repeat(np.asarray(image, np.uint8)[:, :, None], 3, axis=2)
        pixels = self.processor(images=[rgb], return_tensors="pt")["pixel_values"][0]
        return Sam3Input(pixels, tuple(original_size or image.shape[:2]))  # type: ignore[arg-type]

    def encode(self, images: Sequence[Any]) -> list[Sam3Embedding]:
        """One vision embedding per image, ``encoder_batch`` images per encoder call."""
        inputs = [im if isinstance(im, Sam3Input) else self.prepare(im) for im in images]
        out: list[Sam3Embedding] = []
        for start in range(0, len(inputs), self.encoder_batch):
            group = inputs[start : start + self.encoder_batch]
            batch = torch.stack([g.pixel_values for g in group]).to(self.device)
            with torch.inference_mode(), torch.autocast("cuda", torch.bfloat16, enabled=self.bf16):
                vision = self.model.get_vision_features(pixel_values=batch)
            self.vision_calls += 1
            self.vision_images += len(group)
            hidden = [h.float() for h in vision.fpn_hidden_states]
            position = [p.float() for p in vision.fpn_position_encoding]
            for i, g in enumerate(group):
                out.append(
                    Sam3Embedding(tuple(h[i : i + 1] for h in hidden), tuple(p[i : i + 1] for p in position), g.size)
                )
        return out

    # --- text -----------------------------------------------------------------------------------------------

    def check_phrase(self, phrase: str) -> str:
        """The phrase stripped; :class:`~pixelperfect.pipeline.model.sam3_files.ConceptError` if unreadable."""
        return check_phrase(self.tokenizer, phrase)

    def text_embeddings(self, phrases: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(P, L, D)`` projected text features and ``(P, L)`` attention masks; phrases not seen before are
        encoded together in one call, then kept."""
        new = [p for p in dict.fromkeys(phrases) if p not in self._text]
        if new:
            for p in new:
                self.check_phrase(p)
            tokens = self.tokenizer(new, padding="max_length", max_length=CONCEPT_MAX_TOKENS, return_tensors="pt")
            ids, mask = tokens["input_ids"].to(self.device), tokens["attention_mask"].to(self.device)
            with torch.inference_mode():
                features = self.model.get_text_features(input_ids=ids, attention_mask=mask).pooler_output
            self.text_calls += 1
            self.text_phrases += len(new)
            for i, p in enumerate(new):
                self._text[p] = (features[i : i + 1].float(), mask[i : i + 1])
        pairs = [self._text[p] for p in phrases]
        return torch.cat([f for f, _ in pairs]), torch.cat([m for _, m in pairs])

    # --- decoding -------------------------------------------------------------------------------------------

    def predict_concepts(
        self,
        embedding: Sam3Embedding,
        phrases: Sequence[str],
        exemplars: np.ndarray | None = None,
        *,
        threshold: float = 0.3,
        max_instances: int = 32,
    ) -> ConceptInstances:
        """Every instance of every phrase on one image, in one forward pass over a batch of the phrases.

        ``exemplars``: ``(E, 5)`` XYXY pixel boxes of this image and their labels (1 positive, 0 negative), given
        to every phrase. Instances scoring above ``threshold`` are kept, at most ``max_instances`` per phrase."""
        from transformers.modeling_outputs import BaseModelOutputWithPooling
        from transformers.models.sam3.modeling_sam3 import Sam3VisionEncoderOutput

        height, width = embedding.size
        if not phrases:
            return ConceptInstances.empty(height, width)
        features, text_mask = self.text_embeddings(phrases)
        n = len(phrases)
        vision = Sam3VisionEncoderOutput(
            fpn_hidden_states=tuple(h.expand(n, -1, -1, -1) for h in embedding.fpn_hidden_states),
            fpn_position_encoding=tuple(p.expand(n, -1, -1, -1) for p in embedding.fpn_position_encoding),
        )
        kwargs: dict[str, Any] = {}
        if exemplars is not None and len(exemplars):
            boxes, labels = exemplar_tensors(np.asarray(exemplars, np.float64), height, width)
            kwargs = {"input_boxes": boxes.expand(n, -1, -1).to(self.device),
                      "input_boxes_labels": labels.expand(n, -1).to(self.device)}  # fmt: skip
        with torch.inference_mode():
            out = self.model(
                vision_embeds=vision,
                text_embeds=BaseModelOutputWithPooling(pooler_output=features),
                attention_mask=text_mask,
                **kwargs,
            )
        self.decode_calls += 1
        return instances_from_output(out, (height, width), threshold, max_instances)

    def predict_boxes(self, embedding: Any, boxes: np.ndarray) -> MaskPrediction:
        raise NotImplementedError("model sam3 takes concept prompts (--prompts concept --concept PHRASE), not boxes")

    def predict_points(self, embedding: Any, points: np.ndarray, labels: np.ndarray) -> MaskPrediction:
        raise NotImplementedError("model sam3 takes concept prompts (--prompts concept --concept PHRASE), not points")


def exemplar_tensors(exemplars: np.ndarray, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(1, E, 4)`` boxes as the model reads them — centre x, centre y, width, height, each in ``[0, 1]`` of
    the image's width or height — and ``(1, E)`` int64 labels, from ``(E, 5)`` XYXY pixel boxes and labels."""
    x1, y1, x2, y2 = (exemplars[:, i] for i in range(4))
    boxes = np.stack([(x1 + x2) / 2 / width, (y1 + y2) / 2 / height, (x2 - x1) / width, (y2 - y1) / height], 1)
    return (
        torch.from_numpy(boxes.astype(np.float32))[None],
        torch.from_numpy(exemplars[:, 4].astype(np.int64))[None],
    )


def instances_from_output(out: Any, size: tuple[int, int], threshold: float, max_instances: int) -> ConceptInstances:
    """The kept instances of a ``Sam3ImageSegmentationOutput`` of ``P`` phrases on one image of ``size``."""
    height, width = size
    scores = (out.pred_logits.float().sigmoid() * out.presence_logits.float().sigmoid()).cpu()  # (P, Q)
    scale = torch.tensor([width, height, width, height], dtype=torch.float32)
    parts: list[tuple[int, torch.Tensor]] = []
    for p in range(scores.shape[0]):
        keep = torch.nonzero(scores[p] > threshold).flatten()
        order = torch.argsort(scores[p, keep], descending=True, stable=True)[:max_instances]
        parts.append((p, keep[order]))
    total = sum(len(idx) for _, idx in parts)
    if total == 0:
        return ConceptInstances.empty(height, width)
    logits = torch.cat([out.pred_masks[p, idx].float() for p, idx in parts]).cpu()  # (N, h, w)
    probs = torch.nn.functional.interpolate(
        logits.sigmoid()[None], size=(height, width), mode="bilinear", align_corners=False
    )[0]
    inner = (logits > STABILITY_OFFSET).flatten(1).sum(1)
    outer = (logits > -STABILITY_OFFSET).flatten(1).sum(1)
    stability = torch.where(outer > 0, inner / outer.clamp(min=1), torch.ones_like(inner, dtype=torch.float32))
    return ConceptInstances(
        masks=(probs > 0.5).numpy(),
        scores=torch.cat([scores[p, idx] for p, idx in parts]).numpy().astype(np.float32),
        boxes=torch.cat([out.pred_boxes[p, idx].float().cpu() * scale for p, idx in parts]).numpy().astype(np.float64),
        stability=stability.numpy().astype(np.float32),
        phrase=np.concatenate([np.full(len(idx), p, np.int64) for p, idx in parts]),
    )
