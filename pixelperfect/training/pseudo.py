"""Pseudo-labels for box-only datasets (RSNA): the masks of an earlier run, kept where SAM was consistent.

The research trained only on its most consistent masks. Here a segment of run ``RUN`` becomes a training target
when its ``consistency_iou`` (mean pairwise IoU of the masks under box jitter) is at least ``X``; its prompt box
is the run's box and its target the run's stored mask PNG. Everything written about the training says
``pseudo-labels`` so nobody mistakes them for ground truth.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from pixelperfect.config import Settings
from pixelperfect.db import repo
from pixelperfect.db.models import Image, Segment
from pixelperfect.db.session import session_scope
from pixelperfect.pipeline.options import PromptKind
from pixelperfect.training.recipe import TrainConfig
from pixelperfect.training.targets import TargetSpec, TrainingDataError


def pseudo_label_specs(
    config: TrainConfig, settings: Settings, source_keys: set[str]
) -> tuple[list[TargetSpec], dict[str, Any]]:
    """``(specs, summary)``: one :class:`TargetSpec` per image of the earlier run with a kept segment.

    The segments of the run's variant named like the training variant are used when the run has one, otherwise
    those of its first variant. Images absent from the training source are left out (and counted).
    """
    from pixelperfect.pipeline.preprocess.variants import parse_variant

    threshold = float(config.min_consistency_iou or 0.0)
    wanted = parse_variant(config.variant).name
    with session_scope(settings.database_url) as session:
        run = repo.get_run(session, name=str(config.targets_from_run))
        if run is None:
            raise TrainingDataError(f"--targets-from-run: no run named {config.targets_from_run!r}")
        names = [v["name"] for v in run.variants]
        variant = wanted if wanted in names else names[0]
        base = select(Segment).where(Segment.run_id == run.id, Segment.variant == variant)
        total = int(session.scalar(select(func.count()).select_from(base.subquery())) or 0)
        rows = session.execute(
            select(Image.key, Segment.prompt, Segment.mask_key)
            .join(Image, Image.id == Segment.image_id)
            .where(
                Segment.run_id == run.id,
                Segment.variant == variant,
                Segment.consistency_iou >= threshold,
                Segment.mask_key.is_not(None),
                Segment.prompt_kind == PromptKind.box.value,
            )
            .order_by(Image.key, Segment.prompt_index)
        ).all()
        run_info = {"run": run.name, "run_id": run.id, "model": run.model, "checkpoint_sha256": run.checkpoint_sha256}
    specs: dict[str, TargetSpec] = {}
    outside = 0
    for key, prompt, mask_key in rows:
        if key not in source_keys:
            outside += 1
            continue
        specs.setdefault(key, TargetSpec(key)).pseudo.append(([float(v) for v in prompt], str(mask_key)))
    summary = {
        **run_info,
        "variant": variant,
        "min_consistency_iou": threshold,
        "segments_total": total,
        "segments_kept": len(rows) - outside,
        "segments_not_in_source": outside,
        "images": len(specs),
    }
    if not specs:
        raise TrainingDataError(
            f"run {config.targets_from_run!r} has no {variant!r} segment with consistency_iou >= {threshold} "
            f"on an image of {config.source} ({total} segments in all)"
        )
    return list(specs.values()), summary
