"""The SAM 2 / 2.1 / MedSAM2 names and their architectures, as ``transformers`` ``Sam2Config`` objects.

The table is plain data (no torch, no transformers at import): the producer checks a checkpoint's ``config.json``
against ``expected_config`` without loading either. ``sam2_config(name)`` builds the ``transformers`` config (lazy
import) for a worker, the converter and the tests.

Figures are those of Meta's published model configs (``sam2/configs/sam2.1/sam2.1_hiera_{t,s,b+,l}.yaml`` and the
defaults of ``sam2.modeling.backbones.hieradet.Hiera`` they leave unset: ``stages (2, 3, 16, 3)``,
``global_att_blocks (12, 16, 20)``, ``window_pos_embed_bkg_spatial_size (14, 14)``, ``window_spec (8, 4, 14, 7)``,
stage widths and heads doubling per stage). SAM 2.0 (``sam2_hiera_*``) has the same image-side architecture as
2.1: the 2.1 changes (object-pointer temporal encodings, spatial no-object embedding) are in the video memory path,
which ``Sam2Model`` for single images does not hold. MedSAM2 is SAM 2.1 hiera-tiny at a 512² input (its authors'
``sam2.1_hiera_t512.yaml``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SAM2_PATCH = 16  # the prompt encoder's embedding grid is image_size / 16, as for SAM v1


@dataclass(frozen=True)
class HieraSpec:
    """One Hiera image encoder (the trunk) with the SAM 2 FPN neck and heads."""

    embed_dim: int  # stage 1 width; stages double it
    heads: int  # stage 1 heads; stages double them
    blocks_per_stage: tuple[int, int, int, int]
    global_attention_blocks: tuple[int, ...]
    window_size_per_stage: tuple[int, int, int, int] = (8, 4, 14, 7)
    window_background: tuple[int, int] = (7, 7)  # window_pos_embed_bkg_spatial_size
    image_size: int = 1024
    fpn_hidden_size: int = 256  # neck width = prompt encoder width = mask decoder width
    mlp_dim: int = 2048  # mask decoder two-way transformer MLP
    iou_head_hidden_dim: int = 256

    @property
    def embed_dim_per_stage(self) -> list[int]:
        return [self.embed_dim * 2**i for i in range(4)]

    @property
    def heads_per_stage(self) -> list[int]:
        return [self.heads * 2**i for i in range(4)]

    @property
    def backbone_channel_list(self) -> list[int]:
        return list(reversed(self.embed_dim_per_stage))

    @property
    def feature_sizes(self) -> list[list[int]]:
        """The three levels the mask decoder reads: strides 4, 8 and 16 of the input."""
        return [[self.image_size // s, self.image_size // s] for s in (4, 8, 16)]


_TINY = HieraSpec(96, 1, (1, 2, 7, 2), (5, 7, 9))
_SMALL = HieraSpec(96, 1, (1, 2, 11, 2), (7, 10, 13))
_BASE_PLUS = HieraSpec(112, 2, (2, 3, 16, 3), (12, 16, 20), window_background=(14, 14))
_LARGE = HieraSpec(144, 2, (2, 6, 36, 4), (23, 33, 43), window_size_per_stage=(8, 4, 16, 8))
_MEDSAM2 = HieraSpec(96, 1, (1, 2, 7, 2), (5, 7, 9), image_size=512)

# A small SAM 2 for unit tests, CPU demos and benchmarks (random weights): five-block Hiera on 128², 32-wide heads
SAM2_TINY_TEST = HieraSpec(
    8,
    1,
    (1, 1, 2, 1),
    (3,),  # not a stage's first block: those pool their queries, which a global block cannot
    window_size_per_stage=(4, 4, 4, 4),
    window_background=(2, 2),
    image_size=128,
    fpn_hidden_size=32,
    mlp_dim=64,
    iou_head_hidden_dim=32,
)


@dataclass(frozen=True)
class Sam2Family:
    """A model name: its architecture, family label for reports, and where users get weights."""

    name: str
    spec: HieraSpec
    version: str  # "2.0", "2.1"
    weights: str  # where users get the weights (a Hugging Face repository or a release)


_FAMILIES = (
    Sam2Family("sam2.1_hiera_tiny", _TINY, "2.1", "facebook/sam2.1-hiera-tiny"),
    Sam2Family("sam2.1_hiera_small", _SMALL, "2.1", "facebook/sam2.1-hiera-small"),
    Sam2Family("sam2.1_hiera_base_plus", _BASE_PLUS, "2.1", "facebook/sam2.1-hiera-base-plus"),
    Sam2Family("sam2.1_hiera_large", _LARGE, "2.1", "facebook/sam2.1-hiera-large"),
    Sam2Family("sam2_hiera_tiny", _TINY, "2.0", "facebook/sam2-hiera-tiny"),
    Sam2Family("sam2_hiera_small", _SMALL, "2.0", "facebook/sam2-hiera-small"),
    Sam2Family("sam2_hiera_base_plus", _BASE_PLUS, "2.0", "facebook/sam2-hiera-base-plus"),
    Sam2Family("sam2_hiera_large", _LARGE, "2.0", "facebook/sam2-hiera-large"),
    Sam2Family("medsam2", _MEDSAM2, "2.1", "wanglab/MedSAM2 (MedSAM2_latest.pt, then convert-checkpoint)"),
    Sam2Family("sam2_tiny", SAM2_TINY_TEST, "2.1", "random weights (tests, demos, benchmarks)"),
)
SAM2_MODELS: dict[str, Sam2Family] = {f.name: f for f in _FAMILIES}


def is_sam2(name: str) -> bool:
    return name in SAM2_MODELS


def sam2_spec(name: str) -> HieraSpec:
    try:
        return SAM2_MODELS[name].spec
    except KeyError:
        raise ValueError(f"unknown SAM 2 model {name!r}; known: {', '.join(SAM2_MODELS)}") from None


def expected_config(spec: HieraSpec) -> dict[str, Any]:
    """The ``config.json`` fields (dotted paths) that fix the architecture's tensor shapes and grid.

    Compared at submit against a checkpoint directory's ``config.json`` (plain JSON: no torch, no transformers).
    """
    return {
        "vision_config.backbone_config.hidden_size": spec.embed_dim,
        "vision_config.backbone_config.num_attention_heads": spec.heads,
        "vision_config.backbone_config.blocks_per_stage": list(spec.blocks_per_stage),
        "vision_config.backbone_config.embed_dim_per_stage": spec.embed_dim_per_stage,
        "vision_config.backbone_config.num_attention_heads_per_stage": spec.heads_per_stage,
        "vision_config.backbone_config.window_size_per_stage": list(spec.window_size_per_stage),
        "vision_config.backbone_config.global_attention_blocks": list(spec.global_attention_blocks),
        "vision_config.backbone_config.window_positional_embedding_background_size": list(spec.window_background),
        "vision_config.backbone_config.image_size": [spec.image_size, spec.image_size],
        "vision_config.backbone_channel_list": spec.backbone_channel_list,
        "vision_config.backbone_feature_sizes": spec.feature_sizes,
        "vision_config.fpn_hidden_size": spec.fpn_hidden_size,
        "prompt_encoder_config.image_size": spec.image_size,
        "prompt_encoder_config.hidden_size": spec.fpn_hidden_size,
        "mask_decoder_config.hidden_size": spec.fpn_hidden_size,
    }


def config_kwargs(spec: HieraSpec) -> dict[str, Any]:
    """The nested keyword arguments of ``transformers.Sam2Config`` for ``spec``."""
    backbone = {
        "hidden_size": spec.embed_dim,
        "num_attention_heads": spec.heads,
        "image_size": [spec.image_size, spec.image_size],
        "blocks_per_stage": list(spec.blocks_per_stage),
        "embed_dim_per_stage": spec.embed_dim_per_stage,
        "num_attention_heads_per_stage": spec.heads_per_stage,
        "window_size_per_stage": list(spec.window_size_per_stage),
        "global_attention_blocks": list(spec.global_attention_blocks),
        "window_positional_embedding_background_size": list(spec.window_background),
    }
    vision = {
        "backbone_config": {"model_type": "sam2_hiera_det_model", **backbone},
        "backbone_channel_list": spec.backbone_channel_list,
        "backbone_feature_sizes": spec.feature_sizes,
        "fpn_hidden_size": spec.fpn_hidden_size,
    }
    prompt = {"hidden_size": spec.fpn_hidden_size, "image_size": spec.image_size, "patch_size": SAM2_PATCH}
    decoder = {
        "hidden_size": spec.fpn_hidden_size,
        "mlp_dim": spec.mlp_dim,
        "iou_head_hidden_dim": spec.iou_head_hidden_dim,
    }
    return {"vision_config": vision, "prompt_encoder_config": prompt, "mask_decoder_config": decoder}


def sam2_config(name: str) -> Any:
    """The ``transformers.Sam2Config`` of model ``name`` (imports transformers)."""
    return config_for(sam2_spec(name))


def config_for(spec: HieraSpec) -> Any:
    from transformers import Sam2Config

    return Sam2Config(**config_kwargs(spec))


def tiny_config() -> Any:
    """The small test configuration (``sam2_tiny``) as a ``Sam2Config``."""
    return config_for(SAM2_TINY_TEST)
