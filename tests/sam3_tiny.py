"""A tiny seeded random-weights SAM 3 and a CLIP tokenizer over a tiny vocabulary, built here (no download).

The vocabulary is the lowercase letters, each also as a word end (``a</w>``), the start and end tokens, and a few
merges so that BPE merges happen ("lung" is one token); every phrase of lowercase words tokenizes.
"""

from __future__ import annotations

import functools
import json
import string
from pathlib import Path
from typing import Any

MERGES = [("l", "u"), ("lu", "n"), ("lun", "g</w>"), ("o", "p"), ("op", "a")]


def tiny_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    tokens = ["<|startoftext|>", "<|endoftext|>"]
    tokens += list(string.ascii_lowercase) + [f"{c}</w>" for c in string.ascii_lowercase]
    tokens += [a + b for a, b in MERGES]
    return {t: i for i, t in enumerate(tokens)}, MERGES


def tokenizer_files() -> dict[str, bytes]:
    vocab, merges = tiny_vocab()
    text = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges)
    return {"vocab.json": json.dumps(vocab).encode(), "merges.txt": text.encode()}


def tiny_config(*, image_size: int = 112, queries: int = 16, init: float = 0.2) -> Any:
    """A SAM 3 of a few thousand parameters per part: 112² input (8² patches of 14 px), 16 queries."""
    from transformers import Sam3Config

    vocab, _ = tiny_vocab()
    grid = image_size // 14
    text_config = {
        "model_type": "clip_text_model", "vocab_size": len(vocab), "hidden_size": 32, "intermediate_size": 64,
        "projection_dim": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "max_position_embeddings": 32,
        "bos_token_id": vocab["<|startoftext|>"], "eos_token_id": vocab["<|endoftext|>"],
        "pad_token_id": vocab["<|endoftext|>"],
    }  # fmt: skip
    config = Sam3Config(
        vision_config={
            "backbone_config": {
                "model_type": "sam3_vit_model", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                "num_attention_heads": 2, "image_size": image_size, "patch_size": 14, "window_size": 4,
                "global_attn_indexes": [1], "pretrain_image_size": image_size // 2,
            },
            "fpn_hidden_size": 32,
            "backbone_feature_sizes": [[grid * 4, grid * 4], [grid * 2, grid * 2], [grid, grid]],
        },
        text_config=text_config,
        geometry_encoder_config={"hidden_size": 32, "num_layers": 1, "num_attention_heads": 2, "intermediate_size": 64},
        detr_encoder_config={"hidden_size": 32, "num_layers": 1, "num_attention_heads": 2, "intermediate_size": 64},
        detr_decoder_config={"hidden_size": 32, "num_layers": 1, "num_queries": queries, "num_attention_heads": 2,
                             "intermediate_size": 64},
        mask_decoder_config={"hidden_size": 32, "num_attention_heads": 2},
        initializer_range=init,
    )  # fmt: skip
    return config


def tiny_model(seed: int = 0, **kwargs: Any) -> Any:
    import torch
    from transformers import Sam3Model

    torch.manual_seed(seed)
    return Sam3Model(tiny_config(**kwargs)).eval()


@functools.cache
def _files(seed: int, text: bool) -> dict[str, bytes]:
    from pixelperfect.pipeline.model.sam3 import sam3_file_bytes

    files = sam3_file_bytes(tiny_model(seed), tokenizer_files())
    if not text:  # the same model's config without its text encoder: refused for concept prompts
        config = json.loads(files["config.json"])
        config.pop("text_config")
        files["config.json"] = json.dumps(config).encode()
    return files


def tiny_files(seed: int = 0, *, text: bool = True) -> dict[str, bytes]:
    """The directory's files ``{name: bytes}`` of a seeded tiny SAM 3 (built once per process and seed)."""
    return dict(_files(seed, text))


def write_tiny_dir(path: Path, seed: int = 0, *, text: bool = True) -> Path:
    """The tiny SAM 3 as a Hugging Face directory at ``path``."""
    path.mkdir(parents=True, exist_ok=True)
    for name, data in tiny_files(seed, text=text).items():
        (path / name).write_bytes(data)
    return path
