"""Meta-format SAM 2 / 2.1 checkpoints (and MedSAM2's) -> a ``transformers.Sam2Model``: our own key mapping.

Meta publishes SAM 2 as ``.pt`` files holding ``{"model": state_dict}`` of its ``SAM2Base`` (image encoder ``trunk``
and ``neck``, ``sam_prompt_encoder``, ``sam_mask_decoder``, plus the video memory path). ``transformers`` names the
same tensors differently and has no converter in its wheel; this module renames them, one rule per difference:

- ``image_encoder.trunk.`` -> ``vision_encoder.backbone.``; ``image_encoder.neck.convs.N.conv.`` ->
  ``vision_encoder.neck.convs.N.``; ``patch_embed.proj`` -> ``patch_embed.projection``; block ``normN`` ->
  ``layer_normN``;
- ``sam_prompt_encoder.`` -> ``prompt_encoder.``: the four ``point_embeddings.N`` (1, C) rows stack into
  ``point_embed`` (4, C); ``mask_downscaling.{0,1,3,4,6}`` -> ``mask_embed.{conv1,layer_norm1,conv2,layer_norm2,
  conv3}``; the random-Fourier ``pe_layer.positional_encoding_gaussian_matrix`` is both
  ``shared_image_embedding.positional_embedding`` and ``prompt_encoder.shared_embedding.positional_embedding``;
- ``sam_mask_decoder.`` -> ``mask_decoder.``: attention ``out_proj`` -> ``o_proj``; transformer ``normN`` ->
  ``layer_normN`` and ``norm_final_attn`` -> ``layer_norm_final_attn``; ``output_upscaling.{0,1,3}`` ->
  ``upscale_conv1``, ``upscale_layer_norm``, ``upscale_conv2``;
- every multi-layer perceptron (Meta: ``layers.0 .. layers.{n-1}``) -> ``proj_in``, ``layers.0 .. layers.{n-3}``,
  ``proj_out``, whatever its depth;
- ``no_mem_embed`` -> ``no_memory_embedding`` (added to the image features when there is no video memory).

The video memory path (memory attention and encoder, object pointers, mask-memory encodings) has no place in the
single-image ``Sam2Model`` and is dropped (``VIDEO_ONLY``); anything else the mapping does not know, any tensor the
model needs that the checkpoint lacks, and any shape that differs is an error naming the keys. Nothing here reads or
writes files (``pipeline/`` does no I/O): ``pixelperfect convert-checkpoint`` loads the ``.pt`` and saves the
directory. No GPU is needed: everything stays on the CPU.

MedSAM2 (``MedSAM2_latest.pt``) is Meta's layout at a 512² input; the image size is not in the weights (Hiera's
background position embedding is interpolated to the feature grid), so it comes from the model name.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from pixelperfect.pipeline.model.sam2_family import SAM2_MODELS, sam2_config
from pixelperfect.pipeline.model.weights import CheckpointError

#: Meta keys of the video memory path: not part of the single-image model, dropped by the conversion.
VIDEO_ONLY = (
    "memory_attention.",
    "memory_encoder.",
    "mask_downsample.",
    "maskmem_tpos_enc",
    "no_mem_pos_enc",
    "no_obj_embed_spatial",
    "no_obj_ptr",
    "obj_ptr_proj.",
    "obj_ptr_tpos_proj.",
)
_PE = "sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"
_PE_TARGETS = ("shared_image_embedding.positional_embedding", "prompt_encoder.shared_embedding.positional_embedding")
_POINTS = re.compile(r"sam_prompt_encoder\.point_embeddings\.(\d+)\.weight")
_MASK_EMBED = {"0": "conv1", "1": "layer_norm1", "3": "conv2", "4": "layer_norm2", "6": "conv3"}
_UPSCALE = {"0": "upscale_conv1", "1": "upscale_layer_norm", "3": "upscale_conv2"}
#: Meta's ``MLP`` modules (``layers.i``) under these paths; ``transformers`` splits them into proj_in/layers/proj_out
_MLP = re.compile(
    r"^(?P<mlp>(?:vision_encoder\.backbone\.blocks\.\d+\.mlp"
    r"|mask_decoder\.transformer\.layers\.\d+\.mlp"
    r"|mask_decoder\.iou_prediction_head"
    r"|mask_decoder\.output_hypernetworks_mlps\.\d+"
    r"|mask_decoder\.pred_obj_score_head))\.layers\.(?P<i>\d+)\.(?P<rest>.+)$"
)
#: plain renames, applied in order to a key that is not one of the special cases above
_RENAMES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(p), r)
    for p, r in (
        (r"^image_encoder\.trunk\.", "vision_encoder.backbone."),
        (r"^image_encoder\.neck\.convs\.(\d+)\.conv\.", r"vision_encoder.neck.convs.\1."),
        (r"^vision_encoder\.backbone\.patch_embed\.proj\.", "vision_encoder.backbone.patch_embed.projection."),
        (r"^(vision_encoder\.backbone\.blocks\.\d+)\.norm(\d)\.", r"\1.layer_norm\2."),
        (r"^sam_mask_decoder\.", "mask_decoder."),
        (r"^sam_prompt_encoder\.", "prompt_encoder."),
        (r"\.out_proj\.", ".o_proj."),
        (r"^(mask_decoder\.transformer\.layers\.\d+)\.norm(\d)\.", r"\1.layer_norm\2."),
        (r"^mask_decoder\.transformer\.norm_final_attn\.", "mask_decoder.transformer.layer_norm_final_attn."),
        (r"^no_mem_embed$", "no_memory_embedding"),
    )
)


def meta_state_dict(payload: Any) -> dict[str, torch.Tensor]:
    """The state dict inside a loaded Meta ``.pt``: ``{"model": sd}`` (Meta, MedSAM2) or a bare state dict.

    A uniform ``module.`` prefix (a checkpoint saved from ``DistributedDataParallel``) is removed.
    """
    state = payload.get("model", payload) if isinstance(payload, dict) else None
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        what = type(payload).__name__ if state is None else "a dict without tensors under 'model' or at its top"
        raise CheckpointError(f"not a Meta SAM 2 checkpoint: it holds {what}, not a state dict of tensors")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def rename_meta_key(key: str, mlp_depth: dict[str, int]) -> str:
    """The ``transformers`` name of one Meta key (the special cases of ``convert_state_dict`` aside).

    ``mlp_depth``: the number of layers of each MLP (by its renamed path), counted in the checkpoint.
    """
    name = key
    for pattern, repl in _RENAMES:
        name = pattern.sub(repl, name)
    m = re.match(r"^prompt_encoder\.mask_downscaling\.(\d+)\.(.+)$", name)
    if m and m.group(1) in _MASK_EMBED:
        return f"prompt_encoder.mask_embed.{_MASK_EMBED[m.group(1)]}.{m.group(2)}"
    m = re.match(r"^mask_decoder\.output_upscaling\.(\d+)\.(.+)$", name)
    if m and m.group(1) in _UPSCALE:
        return f"mask_decoder.{_UPSCALE[m.group(1)]}.{m.group(2)}"
    m = _MLP.match(name)
    if m:
        i, depth = int(m.group("i")), mlp_depth[m.group("mlp")]
        part = "proj_in" if i == 0 else "proj_out" if i == depth - 1 else f"layers.{i - 1}"
        return f"{m.group('mlp')}.{part}.{m.group('rest')}"
    return name


def convert_state_dict(meta: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename a Meta SAM 2 state dict to ``transformers``' names: ``(renamed, dropped video-only keys)``."""
    dropped = [k for k in meta if k.startswith(VIDEO_ONLY)]
    image_side = {k: v for k, v in meta.items() if not k.startswith(VIDEO_ONLY)}
    depth: dict[str, int] = {}
    for key in image_side:
        renamed = key
        for pattern, repl in _RENAMES:
            renamed = pattern.sub(repl, renamed)
        m = _MLP.match(renamed)
        if m:
            depth[m.group("mlp")] = max(depth.get(m.group("mlp"), 0), int(m.group("i")) + 1)
    out: dict[str, torch.Tensor] = {}
    points: dict[int, torch.Tensor] = {}
    for key, value in image_side.items():
        if key == _PE:
            for target in _PE_TARGETS:
                out[target] = value
        elif p := _POINTS.fullmatch(key):
            points[int(p.group(1))] = value
        else:
            out[rename_meta_key(key, depth)] = value
    if points:
        if sorted(points) != list(range(len(points))) or len({tuple(v.shape) for v in points.values()}) != 1:
            raise CheckpointError(f"prompt encoder point embeddings {sorted(points)} are not 0..n-1 of one shape")
        out["prompt_encoder.point_embed.weight"] = torch.cat([points[i].reshape(1, -1) for i in sorted(points)])
    return out, dropped


def describe_meta(meta: dict[str, torch.Tensor]) -> str:
    """What the checkpoint's image encoder looks like: ``Hiera width 96, 12 blocks`` (for error messages)."""
    patch = meta.get("image_encoder.trunk.patch_embed.proj.weight")
    blocks = {int(m.group(1)) for k in meta if (m := re.match(r"image_encoder\.trunk\.blocks\.(\d+)\.", k))}
    if patch is None or not blocks:
        sam1 = any(k.startswith("image_encoder.blocks.") for k in meta)
        return "a SAM v1 (ViT) checkpoint" if sam1 else "no SAM 2 Hiera image encoder"
    return f"Hiera width {patch.shape[0]}, {max(blocks) + 1} blocks"


def _expected(spec_name: str) -> str:
    s = SAM2_MODELS[spec_name].spec
    return f"Hiera width {s.embed_dim}, {sum(s.blocks_per_stage)} blocks"


def _listing(keys: list[str], limit: int = 8) -> str:
    more = f" ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def convert_meta_checkpoint(payload: Any, model: str) -> Any:
    """A ``transformers.Sam2Model`` of ``model`` holding a loaded Meta-format checkpoint's weights (eval mode, CPU).

    ``payload``: what ``torch.load`` returned for the ``.pt``. Raises ``CheckpointError`` naming the keys the model
    lacks, the keys the mapping does not know, and the shapes that differ.
    """
    if model not in SAM2_MODELS:
        raise ValueError(f"unknown SAM 2 model {model!r}; known: {', '.join(SAM2_MODELS)}")
    from transformers import Sam2Model

    meta = meta_state_dict(payload)
    converted, _dropped = convert_state_dict(meta)
    config = sam2_config(model)
    with torch.device("meta"):  # shapes only: no memory, no init (a hiera-large is built only once it fits)
        wanted = {k: v.shape for k, v in Sam2Model(config).state_dict().items()}
    missing = sorted(set(wanted) - set(converted))
    unknown = sorted(set(converted) - set(wanted))
    shapes = [
        f"{k} {tuple(converted[k].shape)} != {tuple(wanted[k])}"
        for k in sorted(set(wanted) & set(converted))
        if converted[k].shape != wanted[k]
    ]
    if missing or unknown or shapes:
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing ({_listing(missing)})")
        if unknown:
            problems.append(f"{len(unknown)} unexpected ({_listing(unknown)})")
        if shapes:
            problems.append(f"{len(shapes)} of another shape (checkpoint != model: {_listing(shapes, 4)})")
        raise CheckpointError(
            f"checkpoint does not fit {model} (it has {describe_meta(meta)}; {model} has {_expected(model)}): "
            + "; ".join(problems)
            + " [keys in transformers' names]"
        )
    torch.manual_seed(0)  # the model's own init is overwritten at once; seeded all the same
    hf = Sam2Model(config)
    hf.load_state_dict(converted, strict=True)
    return hf.eval()
