"""Hugging Face model directories (``config.json`` + safetensors) as SAM 2 checkpoints, without torch.

The producer checks at submit that a directory fits the model it was named for, from ``config.json`` and the
safetensors headers alone (JSON; no torch, no transformers: its RSS stays small), and records the sha256 over
the weight files; every worker reads the same files, checks the sha256 and builds the model
(:mod:`pixelperfect.pipeline.model.sam2`). Reading is the caller's: :func:`read_hf_checkpoint` takes a
``read(name) -> bytes`` for the directory (a local path or an ``s3://`` prefix, ``storage.read_url``), so this
module does no I/O.

Layout: ``config.json``; the weights in ``model.safetensors``, or shards named by ``model.safetensors.index.json``
(its ``weight_map``). The sha256 is taken over the weight files in name order, each as its name, a NUL byte, its
size as 8 little-endian bytes and its bytes: it names the weights whatever else the directory holds (a README, a
processor config), and it is what ``runs.checkpoint_sha256`` records for SAM 2 runs.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pixelperfect.pipeline.model.protocol import CheckpointError
from pixelperfect.pipeline.model.sam2_family import HieraSpec, expected_config, sam2_spec

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
#: ``config.json``'s ``model_type`` of the SAM families transformers knows, for the error a wrong family gets
_FAMILY_OF_TYPE = {"sam": "SAM v1", "sam_hq": "SAM-HQ", "sam2": "SAM 2", "edgetam": "EdgeTAM", "sam3": "SAM 3"}


@dataclass
class HfCheckpoint:
    """A Hugging Face model directory read into memory: its parsed ``config.json`` and its weight files."""

    config: dict[str, Any]
    files: dict[str, bytes]  # weight file name -> bytes

    @property
    def sha256(self) -> str:
        return weights_sha256(self.files)


def weights_sha256(files: Mapping[str, bytes]) -> str:
    """SHA-256 over the weight files in name order (module docstring)."""
    digest = hashlib.sha256()
    for name in sorted(files):
        data = files[name]
        digest.update(name.encode() + b"\0" + struct.pack("<Q", len(data)))
        digest.update(data)
    return digest.hexdigest()


def _json(data: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{what} holds a {type(value).__name__}, not a JSON object")
    return value


def read_hf_checkpoint(read: Callable[[str], bytes], where: str = "the checkpoint") -> HfCheckpoint:
    """``config.json`` and the weight files of a model directory; ``read(name)`` returns a file's bytes and
    raises ``FileNotFoundError`` or a ``LookupError`` (``KeyError``) for a missing one."""

    def get(name: str) -> bytes | None:
        try:
            return read(name)
        except (FileNotFoundError, LookupError):  # a store's ObjectNotFoundError is a KeyError
            return None

    raw = get(CONFIG)
    if raw is None:
        raise CheckpointError(
            f"{where} is not a Hugging Face model directory: it has no {CONFIG} (a SAM 2 model takes a directory "
            "with config.json and model.safetensors; convert a Meta .pt file with `pixelperfect convert-checkpoint`)"
        )
    config = _json(raw, f"{where}/{CONFIG}")
    names = [WEIGHTS]
    index = get(INDEX)
    if index is not None:
        weight_map = _json(index, f"{where}/{INDEX}").get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{where}/{INDEX} has no weight_map")
        names = sorted(set(map(str, weight_map.values())))
    files: dict[str, bytes] = {}
    for name in names:
        data = get(name)
        if data is None:
            raise CheckpointError(f"{where} has no weights: {name} is missing (config.json alone is not a model)")
        files[name] = data
    return HfCheckpoint(config, files)


def safetensors_header(data: bytes, name: str = WEIGHTS) -> dict[str, tuple[str, tuple[int, ...]]]:
    """``{tensor: (dtype, shape)}`` from a safetensors file's JSON header (its first ``8 + n`` bytes)."""
    if len(data) < 8:
        raise CheckpointError(f"{name} is not a safetensors file: {len(data)} bytes")
    (size,) = struct.unpack("<Q", data[:8])
    if size > len(data) - 8 or size > 100_000_000:
        raise CheckpointError(f"{name} is not a safetensors file: header length {size} exceeds the file")
    header = _json(data[8 : 8 + size], f"{name}'s safetensors header")
    out: dict[str, tuple[str, tuple[int, ...]]] = {}
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        if not isinstance(entry, dict) or "shape" not in entry:
            raise CheckpointError(f"{name}: header entry {key!r} has no shape")
        out[key] = (str(entry.get("dtype")), tuple(int(d) for d in entry["shape"]))
    return out


def _dotted(config: Mapping[str, Any], path: str) -> Any:
    value: Any = config
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def expected_shapes(spec: HieraSpec) -> dict[str, tuple[int, ...]]:
    """A few tensors whose shapes pin the architecture: the patch embedding (stage-1 width), the last encoder
    block (depth and final width), the neck's widest input and the prompt encoder's width."""
    depth = sum(spec.blocks_per_stage)
    top = spec.embed_dim_per_stage[-1]
    return {
        "vision_encoder.backbone.patch_embed.projection.weight": (spec.embed_dim, 3, 7, 7),
        f"vision_encoder.backbone.blocks.{depth - 1}.mlp.proj_out.weight": (top, 4 * top),
        "vision_encoder.neck.convs.0.weight": (spec.fpn_hidden_size, top, 1, 1),
        "prompt_encoder.point_embed.weight": (4, spec.fpn_hidden_size),
    }


def check_sam2_checkpoint(model: str, checkpoint: HfCheckpoint, where: str = "the checkpoint") -> None:
    """Raise :class:`CheckpointError` naming the mismatch when ``checkpoint`` is not a ``model`` (its family, its
    architecture's figures in ``config.json``, its tensors' names and shapes in the safetensors headers)."""
    spec = sam2_spec(model)
    model_type = checkpoint.config.get("model_type")
    if model_type != "sam2":
        family = _FAMILY_OF_TYPE.get(str(model_type), f"model_type {model_type!r}")
        raise CheckpointError(f"{where} is a {family} checkpoint (config.json model_type {model_type!r}), not SAM 2: "
                              f"model {model} needs a sam2 model directory")  # fmt: skip
    wrong = [
        f"{path.split('.', 1)[-1]} is {_dotted(checkpoint.config, path)!r}, {model} has {want!r}"
        for path, want in expected_config(spec).items()
        if _dotted(checkpoint.config, path) is not None and _dotted(checkpoint.config, path) != want
    ]
    if wrong:
        raise CheckpointError(f"{where} does not fit {model}: config.json's " + "; ".join(wrong[:4]))
    tensors: dict[str, tuple[str, tuple[int, ...]]] = {}
    for name, data in checkpoint.files.items():
        tensors.update(safetensors_header(data, name))
    for key, shape in expected_shapes(spec).items():
        if key not in tensors:
            raise CheckpointError(f"{where} does not fit {model}: its weights have no tensor {key}")
        if tensors[key][1] != shape:
            raise CheckpointError(
                f"{where} does not fit {model}: {key} has shape {list(tensors[key][1])}, {model} needs {list(shape)}"
            )
