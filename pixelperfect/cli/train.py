"""``pixelperfect train``: fine-tune SAM here, or (``--queue``) as one task on the ``train`` queue."""

from __future__ import annotations

import dataclasses
import json
import time
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

from pixelperfect.cli.common import console, err, fail
from pixelperfect.config import Settings, get_settings

if TYPE_CHECKING:
    from pixelperfect.training.recipe import TrainConfig

#: Paths among the options, made absolute ``file://`` URLs (a worker elsewhere must find the same files).
URL_OPTIONS = ("source", "out", "checkpoint", "gt_masks", "annotations", "cache")


def register(app: typer.Typer) -> None:
    """Add ``train`` to the ``pixelperfect`` command."""
    app.command(name="train")(train)


def train(
    source: str = typer.Argument(..., help="training images: s3://bucket/prefix, file://dir or a directory"),
    gt_masks: str | None = typer.Option(None, help="ground-truth masks named by image stem (URL or dir)"),
    annotations: str | None = typer.Option(None, help="box prompts (RSNA or key,x1,y1,x2,y2 CSV); default: mask parts"),
    annotations_format: str = typer.Option("rsna", help="rsna or csv"),
    variant: str = typer.Option("raw", help="preprocessing variant name or spec the model is trained on"),
    model: str | None = typer.Option(None, help="sam_vit_b, sam_vit_l, sam_vit_h, medsam, sam_tiny"),
    checkpoint: str | None = typer.Option(None, help="starting weights: path or s3:// URL (PIXELPERFECT_CHECKPOINT)"),
    out: str = typer.Option(..., help="where checkpoints, config.json and metrics.json go (dir or store URL)"),
    epochs: int | None = typer.Option(None, min=1, help="passes over the training images (default 10; sam_tiny 50)"),
    max_steps: int | None = typer.Option(None, min=1, help="stop after this many optimizer steps"),
    train_encoder: bool = typer.Option(False, help="also train the image encoder (no embedding cache)"),
    seed: int = typer.Option(0, help="seed of the split, the image order, prompt sampling and box jitter"),
    val_fraction: float = typer.Option(0.2, help="share of the images (not boxes) held out for validation"),
    checkpoint_every: int = typer.Option(100, min=1, help="steps between resumable checkpoints"),
    resume: bool = typer.Option(False, help="continue the training in --out from its last checkpoint"),
    queue: bool = typer.Option(False, help="send to the 'train' queue (pixelperfect worker --queues train)"),
    wait: bool = typer.Option(False, help="with --queue: wait for the training and print its metrics"),
    targets_from_run: str | None = typer.Option(None, help="train on the masks of this earlier run (pseudo-labels)"),
    min_consistency_iou: float | None = typer.Option(None, help="with --targets-from-run: keep masks this consistent"),
    lr: float | None = typer.Option(
        None, help="AdamW learning rate; default 1e-4 (MedSAM) for pretrained SAM, 1e-3 for the random sam_tiny"
    ),
    weight_decay: float = typer.Option(0.01, help="AdamW weight decay (MedSAM: 0.01)"),
    batch_size: int = typer.Option(4, min=1, help="images per optimizer step"),
    max_prompts: int = typer.Option(8, min=1, help="boxes per image per step"),
    box_shift: int = typer.Option(20, min=0, help="box sides move outward by 0..N px (MedSAM: 20)"),
    iou_loss_weight: float = typer.Option(1.0, help="weight of the IoU-head MSE (0 turns it off)"),
    patience: int = typer.Option(5, min=1, help="validations without a better Dice before stopping early"),
    val_every: int | None = typer.Option(None, min=1, help="optimizer steps between validations (default: an epoch)"),
    run: str | None = typer.Option(None, "--run", help="name of the training's run row (default: train-<hash>)"),
    cache: str | None = typer.Option(None, help="embedding cache root (default: PIXELPERFECT_STORE_URL/cache)"),
) -> None:
    """Fine-tune SAM's mask decoder (MedSAM recipe) and report validation Dice before and after."""
    options = dict(locals())  # every option except --queue and --wait is a TrainConfig field (--cache: cache_url)
    del options["queue"], options["wait"]
    from pixelperfect.training.data import TrainingDataError
    from pixelperfect.training.setup import TrainError
    from pixelperfect.training.tracking import TrainingRunError

    settings = get_settings()
    try:
        config = train_config(settings, **options)
        if queue:
            _enqueue(config, settings, wait=wait)
            return
        metrics = _train_here(config, settings)
    except (TrainError, TrainingDataError, TrainingRunError, ValueError) as exc:
        fail(str(exc))
    print_metrics(metrics)


def _url(value: str | None) -> str | None:
    from pixelperfect.inputs.sources import absolute_url

    return value if value is None or "://" in value or value == "random" else absolute_url(value)


def train_config(settings: Settings, **options: Any) -> TrainConfig:
    """The ``TrainConfig`` of the ``train`` command's options: paths as URLs, ``model`` and ``checkpoint``
    defaulting to ``PIXELPERFECT_MODEL`` / ``PIXELPERFECT_CHECKPOINT``, ``min_area`` from the settings.
    Raises ``ValueError`` (naming the value) for an invalid configuration."""
    from pixelperfect.training.recipe import TrainConfig

    fields: dict[str, Any] = {k: (_url(v) if k in URL_OPTIONS else v) for k, v in options.items()}
    fields["cache_url"] = fields.pop("cache", None)
    fields["model"] = fields.get("model") or settings.model
    config = TrainConfig(**fields, min_area=settings.min_area)
    if config.checkpoint is None and settings.checkpoint:
        config = dataclasses.replace(config, checkpoint=_url(settings.checkpoint))
    return config


def _train_here(config: TrainConfig, settings: Settings) -> dict[str, Any]:
    """Train in this process, printing each epoch; returns the metrics."""
    from pixelperfect.training.finetune import train as do_train
    from pixelperfect.training.tracking import run_name

    console.print(f"training [bold]{run_name(config)}[/] ({config.model}, variant {config.variant}) -> {config.out}")
    return do_train(config, settings, on_progress=_printer()).metrics


def _printer() -> Any:
    seen = {"epoch": 0, "phase": ""}

    def show(info: dict[str, Any]) -> None:
        if info.get("phase") == "encoding" and seen["phase"] != "encoding":
            err.print(f"encoding {info.get('images')} images (frozen encoder: once, then from the cache)")
        if info.get("epoch", 0) > seen["epoch"]:
            seen["epoch"] = info["epoch"]
            err.print(
                f"epoch {info['epoch']}: step {info.get('step')}/{info.get('total_steps')}, "
                f"val Dice {info.get('val_dice', float('nan')):.4f} (best {info.get('best_val_dice', 0):.4f})"
            )
        seen["phase"] = str(info.get("phase"))

    return show


def print_metrics(metrics: dict[str, Any]) -> None:
    """The per-epoch curve, then Dice before and after and where the checkpoint is."""
    table = Table(title="validation Dice per epoch")
    for col in ("epoch", "step", "train loss", "val Dice", "cache hits", "cache misses"):
        table.add_column(col, justify="right")
    for row in metrics["curve"]:
        cache = row.get("cache") or {}
        table.add_row(
            str(row["epoch"]),
            str(row["step"]),
            f"{row['train_loss']:.4f}",
            f"{row['val_dice']:.4f}",
            str(cache.get("hits", "–")),
            str(cache.get("misses", "–")),
        )
    console.print(table)
    label = " (pseudo-labels)" if metrics.get("pseudo_labels") else ""
    console.print(
        f"val_dice_before {metrics['val_dice_before']:.4f} -> val_dice_after {metrics['val_dice_after']:.4f}{label} "
        f"(best at step {metrics['best_step']} of {metrics['steps']}; final {metrics['val_dice_final']:.4f}; "
        f"{metrics['train_seconds']:.1f}s{', stopped early' if metrics['stopped_early'] else ''})"
    )
    console.print(f"best checkpoint: {metrics['best_checkpoint']}")
    if metrics.get("warning"):
        console.print(f"[yellow]warning:[/] {metrics['warning']}", highlight=False)


def _enqueue(config: TrainConfig, settings: Settings, *, wait: bool) -> None:
    """Check what can be checked here, record the run row, and send one task to the ``train`` queue."""
    from pixelperfect.broker.celery_app import app
    from pixelperfect.broker.names import TRAIN, TRAIN_QUEUE
    from pixelperfect.storage import read_url
    from pixelperfect.training.setup import prepare

    if settings.embedded:
        fail("--queue needs PIXELPERFECT_BROKER_URL (a worker started with `pixelperfect worker --queues train`)")
    from pixelperfect.training.tracking import update_progress

    setup = prepare(config, settings, track=True)
    if setup.run_id is not None:
        update_progress(settings, setup.run_id, {"phase": "queued"})
    sent = app.send_task(TRAIN, (config.as_dict(),), argsrepr=f"(run={setup.run_name!r}, out={config.out!r})")
    console.print(
        f"sent training [bold]{setup.run_name}[/] to queue '{TRAIN_QUEUE}' (task {sent.id}): "
        f"{len(setup.plan.train)} training and {len(setup.plan.val)} validation images; "
        f"follow it with `pixelperfect status {setup.run_name}`"
    )
    if not wait:
        return
    from pixelperfect.training.tracking import read_progress

    while True:
        progress = read_progress(settings, setup.run_name) or {}
        if progress.get("phase") == "failed":
            fail(f"training {setup.run_name} failed: {progress.get('error')}")
        if progress.get("phase") == "done":
            break
        time.sleep(1.0)
    metrics = json.loads(read_url(config.out.rstrip("/") + "/metrics.json", endpoint_url=settings.s3_endpoint_url))
    print_metrics(metrics)
