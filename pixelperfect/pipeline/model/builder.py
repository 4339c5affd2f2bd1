"""Build a segmenter by model name, loading weights once per worker process. Imports torch only for SAM models:
the producer and the report use the pipeline's types without loading libtorch (~700 MiB of RSS).

Families: ``grabcut`` (:mod:`.grabcut`), SAM v1 (:mod:`.sam`, weights by :mod:`.weights`), SAM 2 / 2.1 / MedSAM2
(:mod:`.sam2`, names in :mod:`.sam2_family`, Hugging Face directories read by :mod:`.hf_checkpoint`). A new family
is one more module with a ``Segmenter`` class and one branch here (docs/architecture.md, "How to add a model
family")."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pixelperfect.pipeline.model.grabcut import GrabCutSegmenter
from pixelperfect.pipeline.model.hf_checkpoint import HfCheckpoint
from pixelperfect.pipeline.model.protocol import CheckpointError, MissingDependencyError, Segmenter
from pixelperfect.pipeline.model.sam2_family import is_sam2

#: The oldest ``transformers`` the SAM 2 family is tested with (pyproject.toml pins the same lower bound).
MIN_TRANSFORMERS = "5.25.0"


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit()) if not piece.isdigit() else piece
        if not digits:
            break
        parts.append(int(digits))
        if not piece.isdigit():  # 5.26.0rc1 -> (5, 26, 0)
            break
    return tuple(parts)


def dependency_problem(model: str) -> MissingDependencyError | None:
    """Why this process cannot build ``model``'s family — a package missing or older than it needs — or None.
    SAM 2 needs ``transformers`` >= :data:`MIN_TRANSFORMERS`. Reads the installed version without importing it."""
    if not is_sam2(model):
        return None
    from importlib import metadata
    from importlib.util import find_spec

    if find_spec("transformers") is None:
        return MissingDependencyError(
            "transformers",
            f"model {model} needs the Python package transformers>={MIN_TRANSFORMERS}, which this worker lacks: "
            f"pip install 'transformers>={MIN_TRANSFORMERS}', restart the worker, then `pixelperfect retry RUN "
            "--reason missing_dependency`",
        )
    try:
        installed = metadata.version("transformers")
    except metadata.PackageNotFoundError:
        import transformers

        installed = str(getattr(transformers, "__version__", "0"))
    if _version_tuple(installed) < _version_tuple(MIN_TRANSFORMERS):
        return MissingDependencyError(
            "transformers",
            f"model {model} needs the Python package transformers>={MIN_TRANSFORMERS}, this worker has "
            f"transformers {installed}: pip install 'transformers>={MIN_TRANSFORMERS}', restart the worker, then "
            "`pixelperfect retry RUN --reason missing_dependency`",
        )
    return None


def build_segmenter(
    model: str,
    checkpoint: bytes | HfCheckpoint | Mapping[str, bytes] | None,  # sam3: its Hugging Face directory's files
    device: str = "auto",
    *,
    encoder_batch: int = 8,
    precision: str = "auto",
    compile_encoder: bool = False,
    host_post: bool | None = None,
) -> Segmenter:
    """The segmenter for ``model``; loads weights once (call it once per worker process). ``checkpoint``: a SAM v1
    state dict's bytes, a SAM 2 Hugging Face directory, or None (seeded random weights)."""
    if model == "grabcut":
        return GrabCutSegmenter()
    options: dict[str, Any] = {
        "name": model,
        "encoder_batch": encoder_batch,
        "precision": precision,
        "compile_encoder": compile_encoder,
        "host_post": host_post,
    }
    if model == "sam3":
        from pixelperfect.pipeline.model.sam3 import build_sam3

        if checkpoint is not None and not isinstance(checkpoint, Mapping):
            raise CheckpointError("model sam3 takes a Hugging Face model directory with its tokenizer files")
        return build_sam3(checkpoint, device, encoder_batch=encoder_batch, precision=precision)
    if is_sam2(model):
        problem = dependency_problem(model)
        if problem is not None:
            raise problem
        if checkpoint is not None and not isinstance(checkpoint, HfCheckpoint):
            raise CheckpointError(f"model {model} takes a Hugging Face model directory, not a single file")
        from pixelperfect.pipeline.model.sam2 import Sam2Segmenter, load_sam2
        from pixelperfect.pipeline.model.weights import resolve_device

        return Sam2Segmenter(load_sam2(model, checkpoint), resolve_device(device), **options)
    if checkpoint is not None and not isinstance(checkpoint, bytes):
        raise CheckpointError(f"model {model} takes a SAM v1 state dict file, not a Hugging Face model directory")
    from pixelperfect.pipeline.model.sam import SamSegmenter
    from pixelperfect.pipeline.model.weights import load_sam, resolve_device

    return SamSegmenter(load_sam(model, checkpoint), resolve_device(device), **options)
