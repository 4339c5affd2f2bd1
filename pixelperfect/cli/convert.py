"""``pixelperfect convert-checkpoint``: a Meta-format SAM 2 / 2.1 / MedSAM2 ``.pt`` -> a Hugging Face directory."""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path

import typer

from pixelperfect.cli.common import console, fail


def register(app: typer.Typer) -> None:
    """Add ``convert-checkpoint`` to the ``pixelperfect`` command."""
    app.command("convert-checkpoint")(convert_checkpoint)


def convert_checkpoint(
    source: Path = typer.Argument(..., help="Meta-format .pt (Meta's SAM 2 / 2.1 release, MedSAM2_latest.pt)"),
    out_dir: Path = typer.Argument(..., help="new directory for config.json + model.safetensors"),
    model: str = typer.Option(..., "--model", help="sam2.1_hiera_tiny|small|base_plus|large, sam2_hiera_*, medsam2"),
) -> None:
    """Rename a Meta-format SAM 2 checkpoint's weights to transformers' Sam2Model and save it (CPU only).

    The video memory path is dropped; a checkpoint that does not fit the model is refused with the keys named,
    and nothing is written. The output directory loads with ``submit --checkpoint OUT_DIR``.
    """
    from pixelperfect.pipeline.model.sam2_family import SAM2_MODELS

    if model not in SAM2_MODELS:
        fail(f"unknown SAM 2 model {model!r}; known: {', '.join(SAM2_MODELS)}")
    if not source.is_file():
        fail(f"{source}: no such file")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        fail(f"{out_dir} exists and is not an empty directory (nothing was overwritten)")

    import torch

    from pixelperfect.pipeline.model.sam2_convert import convert_meta_checkpoint, convert_state_dict, meta_state_dict
    from pixelperfect.pipeline.model.weights import CheckpointError

    try:
        payload = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as exc:
        fail(f"{source} does not load as a torch checkpoint: {str(exc).splitlines()[0]}")
    try:
        hf = convert_meta_checkpoint(payload, model)
        dropped = convert_state_dict(meta_state_dict(payload))[1]
    except CheckpointError as exc:
        fail(f"{source}: {exc}")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        hf.save_pretrained(tmp)
        if out_dir.exists():
            out_dir.rmdir()
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    digest = hashlib.sha256((out_dir / "model.safetensors").read_bytes()).hexdigest()
    console.print(
        f"{model}: {sum(p.numel() for p in hf.parameters()):,} parameters -> {out_dir} "
        f"(model.safetensors sha256 {digest}; {len(dropped)} video-memory tensors dropped)"
    )
