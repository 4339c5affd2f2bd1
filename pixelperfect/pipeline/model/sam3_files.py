"""SAM 3's Hugging Face directory without torch: which files it needs, the sha256 a run records, the config and
tokenizer checks ``submit`` makes before anything is registered.

A ``sam3`` checkpoint is a directory (a path, ``file://`` or an ``s3://`` prefix) as ``huggingface-cli download
facebook/sam3`` leaves it: ``config.json``, the weights as ``*.safetensors`` (one file or shards) and the CLIP
tokenizer's ``vocab.json`` and ``merges.txt`` (other files — ``tokenizer.json``, ``processor_config.json`` — are
not read). The run's ``checkpoint_sha256`` is taken over the weight files only, by name, so a re-download of the
same weights or another tokenizer file's formatting does not change a run's identity.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterable, Mapping
from typing import Any

from pixelperfect.pipeline.options import CONCEPT_MAX_TOKENS

CONFIG_FILE = "config.json"
TOKENIZER_FILES = ("vocab.json", "merges.txt")
WEIGHT_SUFFIX = ".safetensors"
#: The model types whose ``config.json`` holds a SAM 3 detector (``sam3_video`` nests it as ``detector_config``).
SAM3_TYPES = ("sam3", "sam3_video")


class Sam3FilesError(ValueError):
    """A SAM 3 directory that lacks a file, or whose config or tokenizer cannot serve concept prompts."""


class ConceptError(ValueError):
    """A concept phrase the model cannot read: empty, or longer than its text encoder's tokens."""


def wanted(name: str) -> bool:
    """Whether the loader reads the file ``name`` (a base name) of the directory."""
    return name == CONFIG_FILE or name in TOKENIZER_FILES or name.endswith(WEIGHT_SUFFIX)


def check_names(names: Iterable[str]) -> None:
    """Raise :class:`Sam3FilesError` naming every file the directory lacks."""
    have = set(names)
    missing = [n for n in (CONFIG_FILE, *TOKENIZER_FILES) if n not in have]
    if not any(n.endswith(WEIGHT_SUFFIX) for n in have):
        missing.append(f"*{WEIGHT_SUFFIX} (the weights)")
    if missing:
        raise Sam3FilesError(
            f"the sam3 checkpoint directory lacks {', '.join(missing)}: it must hold config.json, the weights as "
            "*.safetensors and the tokenizer's vocab.json and merges.txt (huggingface-cli download facebook/sam3)"
        )


def weights_sha256(files: Mapping[str, bytes]) -> str:
    """SHA-256 over the weight files (``*.safetensors``) in name order, each as its name, a NUL byte, its size as 8
    little-endian bytes and its bytes: the formula of the SAM 2 directories (issue 25's ``hf_checkpoint``), so
    every Hugging Face family records its weights alike."""
    digest = hashlib.sha256()
    for name in sorted(n for n in files if n.endswith(WEIGHT_SUFFIX)):
        data = files[name]
        digest.update(name.encode() + b"\0" + struct.pack("<Q", len(data)))
        digest.update(data)
    return digest.hexdigest()


def detector_config(config_bytes: bytes) -> dict[str, Any]:
    """The SAM 3 detector's configuration from ``config.json`` (a ``sam3_video`` file's ``detector_config``).

    Raises :class:`Sam3FilesError` for another model type, or for a model without a text encoder (concept prompts
    are read by it)."""
    try:
        config = json.loads(config_bytes)
    except ValueError as exc:
        raise Sam3FilesError(f"config.json is not JSON: {exc}") from None
    if not isinstance(config, dict) or config.get("model_type") not in SAM3_TYPES:
        kind = config.get("model_type") if isinstance(config, dict) else type(config).__name__
        raise Sam3FilesError(f"config.json is a {kind!r} model, not SAM 3 ({' or '.join(SAM3_TYPES)})")
    if config["model_type"] == "sam3_video":
        config = config.get("detector_config") or {}
    if not config.get("text_config"):
        raise Sam3FilesError(
            "this SAM 3 model has no text encoder (config.json has no text_config): concept prompts need one"
        )
    return dict(config)


def build_tokenizer(files: Mapping[str, bytes]) -> Any:
    """The CLIP tokenizer from ``vocab.json`` and ``merges.txt`` (``transformers.CLIPTokenizer``, no torch)."""
    from transformers import CLIPTokenizer

    try:
        vocab = json.loads(files["vocab.json"])
        lines = files["merges.txt"].decode().splitlines()
    except (KeyError, ValueError) as exc:
        raise Sam3FilesError(f"the tokenizer files do not read: {exc}") from None
    merges: Any = [tuple(line.split()) for line in lines if line.strip() and not line.startswith("#version")]
    if any(len(m) != 2 for m in merges):
        raise Sam3FilesError("merges.txt has a line that is not two tokens")
    return CLIPTokenizer(vocab=vocab, merges=merges)


def check_phrase(tokenizer: Any, phrase: str) -> str:
    """``phrase`` stripped, or :class:`ConceptError` when it is empty or needs more than the text encoder's
    :data:`CONCEPT_MAX_TOKENS` tokens (start and end included)."""
    text = phrase.strip()
    if not text:
        raise ConceptError("a concept phrase is empty: give a short noun phrase such as 'lung opacity'")
    n = len(tokenizer(text)["input_ids"])
    if n > CONCEPT_MAX_TOKENS:
        raise ConceptError(
            f"concept {text!r} is {n} tokens; SAM 3's text encoder reads at most {CONCEPT_MAX_TOKENS} "
            "(start and end included): use a shorter phrase"
        )
    return text
