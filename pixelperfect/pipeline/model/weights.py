"""Build SAM models once: architecture by name, weights from a checkpoint's bytes (path or ``s3://``).

``sam_vit_b``/``sam_vit_l``/``sam_vit_h`` and ``medsam`` (ViT-B weights) use segment-anything's registry, so a
state dict saved by Meta, MedSAM or our fine-tuning loads unchanged. ``sam_tiny`` is a small SAM assembled from
``segment_anything.modeling`` for tests, CPU demos and benchmarks; its checkpoint carries its configuration.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

import torch

from pixelperfect.pipeline.model.protocol import CheckpointError

SAM_ARCH = {"sam_vit_b": "vit_b", "medsam": "vit_b", "sam_vit_l": "vit_l", "sam_vit_h": "vit_h"}
INIT_SEED = 1234


@dataclass(frozen=True)
class TinyConfig:
    """The ``sam_tiny`` architecture: a ViT encoder of ``depth`` blocks of width ``width`` on ``image_size``²."""

    image_size: int = 256
    width: int = 64
    depth: int = 2
    heads: int = 2
    prompt_dim: int = 64

    def __post_init__(self) -> None:
        if self.image_size % 16 or self.image_size < 64:
            raise ValueError(f"sam_tiny image_size must be a multiple of 16 and >= 64, got {self.image_size}")


def build_tiny_sam(config: TinyConfig | None = None) -> torch.nn.Module:
    """A small SAM from segment-anything's own modules (random init, seeded by the caller)."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    cfg = config or TinyConfig()
    grid = cfg.image_size // 16
    encoder = ImageEncoderViT(
        img_size=cfg.image_size,
        patch_size=16,
        embed_dim=cfg.width,
        depth=cfg.depth,
        num_heads=cfg.heads,
        mlp_ratio=4.0,
        out_chans=cfg.prompt_dim,
        qkv_bias=True,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        use_rel_pos=True,
        window_size=min(14, grid),
        global_attn_indexes=(cfg.depth - 1,),
    )
    prompt = PromptEncoder(
        embed_dim=cfg.prompt_dim,
        image_embedding_size=(grid, grid),
        input_image_size=(cfg.image_size, cfg.image_size),
        mask_in_chans=16,
    )
    decoder = MaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(depth=2, embedding_dim=cfg.prompt_dim, mlp_dim=4 * cfg.prompt_dim, num_heads=4),
        transformer_dim=cfg.prompt_dim,
        iou_head_depth=3,
        iou_head_hidden_dim=cfg.prompt_dim,
    )
    return Sam(image_encoder=encoder, prompt_encoder=prompt, mask_decoder=decoder)


def seeded_tiny_sam(seed: int, config: TinyConfig | None = None, *, logit_gain: float = 1.0) -> torch.nn.Module:
    """A ``sam_tiny`` whose weights are the same bytes on every CPU, drawn with ``numpy.random.default_rng``.

    Each tensor has a generator of its own, seeded by ``seed`` and the CRC-32 of the tensor's name, and is
    ``low + (high - low) * u`` with ``u`` numpy's float64 uniforms (from PCG64's integer stream; scalar C, no
    SIMD path), times exact scalars, rounded to float32 once: no step depends on the instruction set (torch's
    seeded initialisers gave 12 % of ``build_tiny_sam``'s values other last bits under ATen's default kernels than
    under AVX2 or AVX-512). Linear and convolution weights are uniform with unit output variance
    (``±sqrt(3 / fan_in)``), their biases ``±0.1``, norms one and zero, embeddings and the prompt encoder's
    Gaussian matrix unit variance (``±sqrt(3)``), positional embeddings ``±0.02``. The mask decoder's transposed
    convolutions have the same kernel at each of their ``k²`` offsets (a nearest-neighbour upsampling and a
    channel mix): random offsets would print a 4-pixel checkerboard into every mask, a boundary at every other
    pixel; this way masks are blobs of the 16-pixel embedding grid with steep edges.

    ``logit_gain`` multiplies the last layer of every hypernetwork MLP, which scales the mask logits and nothing
    else (not the predicted IoUs): at 1 they are ~0.1, all inside segment-anything's stability band of ±1.
    """
    import math
    import zlib

    import numpy as np

    sam = build_tiny_sam(config)
    owners = dict(sam.named_modules())
    state = sam.state_dict()
    layers = ("Linear", "Conv2d", "ConvTranspose2d")
    for name, tensor in state.items():
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        shape, (owner, leaf) = tuple(tensor.shape), name.rsplit(".", 1)
        kind = type(owners[owner]).__name__
        if kind in ("LayerNorm", "LayerNorm2d"):
            values = np.full(shape, 1.0 if leaf == "weight" else 0.0)
        elif kind in layers and leaf == "bias":
            values = rng.uniform(-0.1, 0.1, shape)
        elif kind in layers:
            # Linear (out, in) and Conv2d (out, in, k, k) sum in·k² terms per output; a stride-k ConvTranspose2d
            # (in, out, k, k) sums ``in``
            fan_in = shape[0] if kind == "ConvTranspose2d" else math.prod(shape[1:])
            bound = math.sqrt(3.0 / fan_in)
            drawn = (*shape[:2], 1, 1) if kind == "ConvTranspose2d" else shape
            values = np.broadcast_to(rng.uniform(-bound, bound, drawn), shape)
        elif kind == "Embedding" or leaf == "positional_encoding_gaussian_matrix":
            values = rng.uniform(-math.sqrt(3.0), math.sqrt(3.0), shape)
        elif leaf in ("pos_embed", "rel_pos_h", "rel_pos_w"):
            values = rng.uniform(-0.02, 0.02, shape)
        else:  # a tensor a newer segment-anything added: give it a rule rather than torch's initialiser
            raise AssertionError(f"seeded_tiny_sam has no rule for {name} {shape} ({kind})")
        if owner.startswith("mask_decoder.output_hypernetworks_mlps.") and owner.endswith(".layers.2"):
            values = values * logit_gain
        state[name] = torch.from_numpy(np.array(values, np.float32))
    sam.load_state_dict(state, strict=True)
    return sam


def weights_sha256(model: torch.nn.Module) -> str:
    """SHA-256 of a model's state dict (names, dtypes, shapes and bytes in order), independent of how
    ``torch.save`` lays a checkpoint out."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}:".encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def tiny_checkpoint_bytes(model: torch.nn.Module, config: TinyConfig) -> bytes:
    """Serialise a ``sam_tiny`` as ``{"config": ..., "model": state_dict}`` (the config travels with it)."""
    buf = io.BytesIO()
    torch.save({"config": asdict(config), "model": model.state_dict()}, buf)
    return buf.getvalue()


def _state_dict(payload: Any) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    if isinstance(payload, dict) and "model" in payload and isinstance(payload["model"], dict):
        return payload["model"], payload.get("config")
    if isinstance(payload, dict):
        return payload, None
    raise CheckpointError(f"checkpoint holds a {type(payload).__name__}, not a state dict")


def load_sam(model: str, checkpoint_bytes: bytes | None) -> torch.nn.Module:
    """Build ``model`` and load the checkpoint (``None`` = seeded random weights)."""
    from segment_anything import sam_model_registry

    payload = None
    if checkpoint_bytes is not None:
        try:
            payload = torch.load(io.BytesIO(checkpoint_bytes), map_location="cpu", weights_only=True)
        except Exception as exc:
            raise CheckpointError(f"checkpoint does not load as a torch state dict: {exc}") from None
    state, config = _state_dict(payload) if payload is not None else (None, None)
    torch.manual_seed(INIT_SEED)  # identical random weights in every worker process
    if model == "sam_tiny":
        tiny_cfg = (config or {}).get("tiny", config) if config else None
        cfg = TinyConfig(**{k: v for k, v in (tiny_cfg or {}).items() if k in TinyConfig.__dataclass_fields__})
        sam = build_tiny_sam(cfg)
    elif model in SAM_ARCH:
        sam = sam_model_registry[SAM_ARCH[model]](checkpoint=None)
    else:
        raise ValueError(f"unknown SAM model {model!r}")
    if state is not None:
        try:
            sam.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            first = str(exc).splitlines()[0]
            raise CheckpointError(f"checkpoint does not fit the {model} architecture: {first}") from None
    return sam.eval()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but CUDA is not available")
    return torch.device(device)
