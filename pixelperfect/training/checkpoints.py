"""What a training writes to ``--out`` (a directory or a store URL), and how ``--resume`` reads it back.

Layout::

    config.json                 the full training config: data, targets, variant, hyper-parameters, code version
    metrics.json                val_dice_before, val_dice_after, the per-epoch curve, cache counts, timing
    best.pth                    model weights at the best validation Dice (loads like any SAM checkpoint)
    best.json                   step, epoch and validation Dice of best.pth, its sha256
    last.json                   pointer to the newest step checkpoint: {"step", "model", "state", "model_sha256"}
    checkpoints/slot-{a,b}.pth  model weights at a step (two slots, written alternately)
    checkpoints/slot-{a,b}.state.pt  optimizer state, step, best-so-far, curve (``torch.load(weights_only=True)``)

Model files are in the format of their architecture's standard loader: a bare state dict for ViT-B/L/H and
MedSAM (segment-anything's ``sam_model_registry[arch](checkpoint=...)``), ``{"config", "model"}`` for
``sam_tiny`` (:func:`pixelperfect.pipeline.model.weights.load_sam`). Step checkpoints alternate between two slots and
the pointer is written last, so a crash while writing leaves the previous checkpoint intact and pointed to,
and ``--out`` holds at most two step checkpoints however long the training.
"""

from __future__ import annotations

import hashlib
import io
import json
from typing import Any

import torch

from pixelperfect.pipeline.model.weights import TinyConfig, tiny_checkpoint_bytes
from pixelperfect.storage import ObjectNotFoundError, ObjectStore

CONFIG, METRICS, BEST, BEST_INFO, LAST = "config.json", "metrics.json", "best.pth", "best.json", "last.json"


def tiny_config_of(sam: torch.nn.Module) -> TinyConfig:
    """The :class:`TinyConfig` that builds ``sam`` (read from its modules, so a checkpoint always carries it)."""
    encoder: Any = sam.image_encoder
    return TinyConfig(
        image_size=int(encoder.img_size),
        width=int(encoder.patch_embed.proj.out_channels),
        depth=len(encoder.blocks),
        heads=int(encoder.blocks[0].attn.num_heads),
        prompt_dim=int(sam.prompt_encoder.embed_dim),  # type: ignore[union-attr,arg-type]
    )


def model_bytes(model: str, sam: torch.nn.Module) -> bytes:
    """Serialise the weights in the format the standard loader of ``model``'s architecture reads."""
    if model == "sam_tiny":
        return tiny_checkpoint_bytes(sam, tiny_config_of(sam))
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in sam.state_dict().items()}, buf)
    return buf.getvalue()


def state_dict_of(data: bytes) -> dict[str, torch.Tensor]:
    """The state dict inside model bytes written by :func:`model_bytes` (either format)."""
    payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if isinstance(payload, dict) and isinstance(payload.get("model"), dict):
        return payload["model"]  # type: ignore[no-any-return]
    return payload  # type: ignore[no-any-return]


class CheckpointStore:
    """Reads and writes one training's files under ``store``."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    def read_json(self, name: str) -> dict[str, Any] | None:
        try:
            return json.loads(self.store.get(name))  # type: ignore[no-any-return]
        except ObjectNotFoundError:
            return None

    def write_json(self, name: str, value: dict[str, Any]) -> None:
        self.store.put(name, json.dumps(value, indent=2, sort_keys=True).encode(), "application/json")

    def save_step(self, step: int, weights: bytes, state: dict[str, Any]) -> str:
        """Write a step checkpoint into the slot the pointer does not name, then move the pointer to it."""
        last = self.read_json(LAST)
        slot = "b" if last and last.get("slot") == "a" else "a"
        model_key, state_key = f"checkpoints/slot-{slot}.pth", f"checkpoints/slot-{slot}.state.pt"
        buf = io.BytesIO()
        torch.save(state, buf)
        self.store.put(model_key, weights, "application/octet-stream")
        self.store.put(state_key, buf.getvalue(), "application/octet-stream")
        sha = hashlib.sha256(weights).hexdigest()
        self.write_json(LAST, {"step": step, "slot": slot, "model": model_key, "state": state_key, "model_sha256": sha})
        return self.store.url_for(model_key)

    def load_last(self) -> tuple[int, bytes, dict[str, Any]] | None:
        """``(step, model bytes, state)`` of the newest step checkpoint, or ``None`` if there is none."""
        last = self.read_json(LAST)
        if last is None:
            return None
        weights = self.store.get(last["model"])
        if hashlib.sha256(weights).hexdigest() != last["model_sha256"]:
            raise RuntimeError(f"{self.store.url_for(last['model'])} does not match {LAST}: the checkpoint is damaged")
        state = torch.load(io.BytesIO(self.store.get(last["state"])), map_location="cpu", weights_only=True)
        if int(state["step"]) != int(last["step"]):
            raise RuntimeError(f"{last['state']} is at step {state['step']}, {LAST} says {last['step']}: damaged")
        return int(last["step"]), weights, state

    def save_best(self, weights: bytes, info: dict[str, Any]) -> str:
        self.store.put(BEST, weights, "application/octet-stream")
        self.write_json(BEST_INFO, {**info, "sha256": hashlib.sha256(weights).hexdigest()})
        return self.store.url_for(BEST)

    def url(self, name: str) -> str:
        return self.store.url_for(name)
