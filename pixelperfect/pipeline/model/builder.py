"""Build a segmenter by model name, loading weights once per worker process. Imports torch only for SAM models:
the producer and the report use the pipeline's types without loading libtorch (~700 MiB of RSS)."""

from __future__ import annotations

from collections.abc import Mapping

from pixelperfect.pipeline.model.grabcut import GrabCutSegmenter
from pixelperfect.pipeline.model.protocol import Segmenter


def build_segmenter(
    model: str,
    checkpoint_bytes: bytes | Mapping[str, bytes] | None,  # sam3: its Hugging Face directory's files
    device: str = "auto",
    *,
    encoder_batch: int = 8,
    precision: str = "auto",
    compile_encoder: bool = False,
    host_post: bool | None = None,
) -> Segmenter:
    """The segmenter for ``model``; loads weights once (call it once per worker process)."""
    if model == "grabcut":
        return GrabCutSegmenter()
    if model == "sam3":
        from pixelperfect.pipeline.model.sam3 import build_sam3

        return build_sam3(checkpoint_bytes, device, encoder_batch=encoder_batch, precision=precision)
    from pixelperfect.pipeline.model.sam import SamSegmenter
    from pixelperfect.pipeline.model.weights import load_sam, resolve_device

    sam = load_sam(model, checkpoint_bytes)  # type: ignore[arg-type]
    return SamSegmenter(
        sam,
        resolve_device(device),
        name=model,
        encoder_batch=encoder_batch,
        precision=precision,
        compile_encoder=compile_encoder,
        host_post=host_post,
    )
