"""A training whose images, masks, checkpoints and embedding cache all live on S3 (moto over real HTTP)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from pixelperfect.config import use_settings
from pixelperfect.pipeline.model.weights import load_sam
from pixelperfect.training.finetune import train
from pixelperfect.training.recipe import TrainConfig
from tests.conftest import S3Server, upload_dir
from tests.training.conftest import train_settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_training_reads_and_writes_s3(
    s3_server: S3Server, s3_bucket: str, train_phantoms: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    client = s3_server.client()
    upload_dir(client, s3_bucket, train_phantoms / "images", "data/images")
    upload_dir(client, s3_bucket, train_phantoms / "masks", "data/masks")
    client.put_object(Bucket=s3_bucket, Key="models/tiny.pth", Body=tiny_checkpoint.read_bytes())
    settings = train_settings(tmp_path).model_copy(
        update={"store_url": f"s3://{s3_bucket}/results", "s3_endpoint_url": s3_server.endpoint}
    )
    use_settings(settings)
    config = TrainConfig(
        source=f"s3://{s3_bucket}/data/images",
        gt_masks=f"s3://{s3_bucket}/data/masks",
        checkpoint=f"s3://{s3_bucket}/models/tiny.pth",
        out=f"s3://{s3_bucket}/runs/tuned",
        model="sam_tiny",
        max_steps=4,
        checkpoint_every=2,
    )
    first = train(config, settings)
    assert first.best_url == f"s3://{s3_bucket}/runs/tuned/best.pth"
    resumed = train(replace(config, resume=True, max_steps=6), settings)
    assert resumed.metrics["resumed_from_step"] == 4 and resumed.metrics["steps"] == 6
    assert resumed.metrics["cache"]["encoded_this_session"] == 0  # every embedding came back from S3

    def keys(prefix: str) -> set[str]:
        listing = client.list_objects_v2(Bucket=s3_bucket, Prefix=prefix)
        return {o["Key"].removeprefix(prefix) for o in listing.get("Contents", [])}

    assert {"best.pth", "best.json", "config.json", "metrics.json", "last.json"} <= keys("runs/tuned/")
    cfg = json.loads(client.get_object(Bucket=s3_bucket, Key="runs/tuned/config.json")["Body"].read())
    assert len(keys("results/cache/embeddings/")) == cfg["data"]["train_images"] + cfg["data"]["val_images"]
    best = client.get_object(Bucket=s3_bucket, Key="runs/tuned/best.pth")["Body"].read()
    load_sam("sam_tiny", best)  # loads like any checkpoint
