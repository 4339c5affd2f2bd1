"""SAM 2 checkpoints at submit: a Hugging Face directory is checked against the model from ``config.json`` and the
safetensors headers alone (the producer never imports torch), and every misfit is refused with a clear error
before anything is registered."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save as save_safetensors
from sqlalchemy import inspect

from pixelperfect.config import MODEL_NAMES
from pixelperfect.db.session import get_engine
from pixelperfect.pipeline.model.hf_checkpoint import expected_shapes
from pixelperfect.pipeline.model.sam2_family import config_kwargs, sam2_spec
from pixelperfect.producer.enqueue import SubmitError, SubmitRequest, submit
from tests.conftest import S3Server, embedded_settings, upload_dir


def fake_directory(path: Path, model: str, *, model_type: str = "sam2", weights: bool = True) -> Path:
    """A directory with ``model``'s config.json and a safetensors file holding its pinned tensors (zeros): the
    shapes the submit check reads, without building a model."""
    path.mkdir(parents=True)
    config = {"model_type": model_type, **config_kwargs(sam2_spec(model))}
    (path / "config.json").write_text(json.dumps(config))
    if weights:
        tensors = {k: np.zeros(shape, np.float32) for k, shape in expected_shapes(sam2_spec(model)).items()}
        (path / "model.safetensors").write_bytes(save_safetensors(tensors))
    return path


def refused(tmp_path: Path, phantom_dir: Path, model: str, checkpoint: str, match: str) -> None:
    settings = embedded_settings(tmp_path)
    req = SubmitRequest(source=str(phantom_dir / "images"), run="r", variants=["raw"], model=model,
                        checkpoint=checkpoint, annotations=str(phantom_dir / "labels.csv"))  # fmt: skip
    with pytest.raises(SubmitError, match=match):
        submit(req, settings, run_batches=lambda *a, **k: None)
    assert not inspect(get_engine(settings.database_url)).has_table("runs")  # nothing registered


def test_misfitting_checkpoints_are_refused_before_anything_is_registered(tmp_path: Path, phantom_dir: Path) -> None:
    sam_v1 = tmp_path / "sam_vit_b.pth"
    sam_v1.write_bytes(b"PK\x03\x04 a torch zip")
    refused(tmp_path / "a", phantom_dir, "sam2.1_hiera_tiny", str(sam_v1), r"not a Hugging Face model directory")
    v1_dir = fake_directory(tmp_path / "hf-sam", "sam2.1_hiera_tiny", model_type="sam")
    refused(tmp_path / "b", phantom_dir, "sam2.1_hiera_tiny", str(v1_dir), r"SAM v1 checkpoint")
    large = fake_directory(tmp_path / "large", "sam2.1_hiera_large")
    refused(tmp_path / "c", phantom_dir, "sam2.1_hiera_tiny", str(large), r"does not fit sam2\.1_hiera_tiny.*144.*96")
    bare = fake_directory(tmp_path / "bare", "sam2.1_hiera_tiny", weights=False)
    refused(tmp_path / "d", phantom_dir, "sam2.1_hiera_tiny", str(bare), r"no weights: model\.safetensors")
    refused(tmp_path / "e", phantom_dir, "medsam2", str(fake_directory(tmp_path / "t", "sam2.1_hiera_tiny")),
            r"does not fit medsam2: .*image_size")  # fmt: skip
    # an unknown model: the error lists the names, SAM 2's among them
    refused(
        tmp_path / "f",
        phantom_dir,
        "sam3_hiera",
        str(large),
        r"unknown model 'sam3_hiera'.*sam2\.1_hiera_tiny.*medsam2",
    )


def test_a_fitting_directory_is_hashed_without_importing_torch(tmp_path: Path, phantom_dir: Path) -> None:
    """The producer's check in a fresh interpreter: the run records the sha256 over the weight files, and
    neither torch nor transformers was imported."""
    good = fake_directory(tmp_path / "good", "sam2.1_hiera_base_plus")
    code = f"""
import json, sys
from pixelperfect.config import Settings, use_settings
from pixelperfect.producer.enqueue import SubmitRequest, submit
from pixelperfect.pipeline.model.hf_checkpoint import read_hf_checkpoint
s = Settings(broker_url=None, database_url="sqlite:///{tmp_path}/pp.db", store_url="file://{tmp_path}/store")
use_settings(s)
req = SubmitRequest(source="{phantom_dir / "images"}", run="r", variants=["raw"], model="sam2.1_hiera_base_plus",
                    checkpoint="{good}", annotations="{phantom_dir / "labels.csv"}")
submit(req, s, execute=False)
from sqlalchemy import create_engine, text
sha = create_engine(s.database_url).connect().execute(text("select checkpoint_sha256 from runs")).scalar()
want = read_hf_checkpoint(lambda n: open("{good}/" + n, "rb").read()).sha256
print(json.dumps({{"torch": "torch" in sys.modules, "transformers": "transformers" in sys.modules,
                  "same": sha == want}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"torch": False, "transformers": False, "same": True}
    assert "sam2.1_hiera_base_plus" in MODEL_NAMES


@pytest.mark.integration
def test_an_s3_prefix_is_checked_at_submit_and_refused_by_a_worker_once_a_weight_changed(
    tmp_path: Path, phantom_dir: Path, s3_server: S3Server, s3_bucket: str
) -> None:
    """A directory under an ``s3://`` prefix (moto over HTTP): the producer records its sha256, a worker builds the
    model from the same objects, and a worker that reads other weights than the run's refuses them."""
    import dataclasses

    import torch

    from pixelperfect.db import repo
    from pixelperfect.db.session import session_scope
    from pixelperfect.pipeline.model.sam2 import Sam2Segmenter, seeded_sam2
    from pixelperfect.worker.runtime import CheckpointMismatchError, RunSpec, Runtime

    seeded_sam2("sam2_tiny", 3).save_pretrained(tmp_path / "tiny")
    client = s3_server.client()
    upload_dir(client, s3_bucket, tmp_path / "tiny", "models/tiny")
    url = f"s3://{s3_bucket}/models/tiny/"
    settings = embedded_settings(tmp_path, s3_endpoint_url=s3_server.endpoint)
    req = SubmitRequest(source=str(phantom_dir / "images"), run="s3", variants=["raw"], model="sam2_tiny",
                        checkpoint=url, annotations=str(phantom_dir / "labels.csv"))  # fmt: skip
    submit(req, settings, execute=False)
    with session_scope(settings.database_url) as session:
        spec = RunSpec.from_row(repo.get_run(session, name="s3"))
    assert spec.checkpoint == url and spec.checkpoint_sha256 and len(spec.checkpoint_sha256) == 64
    seg = Runtime(settings).segmenter(spec)
    assert isinstance(seg, Sam2Segmenter)
    assert torch.equal(
        seg.model.prompt_encoder.point_embed.weight, seeded_sam2("sam2_tiny", 3).prompt_encoder.point_embed.weight
    )

    other = tmp_path / "other"
    seeded_sam2("sam2_tiny", 4).save_pretrained(other)  # someone replaced the weights under the run's prefix
    client.put_object(
        Bucket=s3_bucket, Key="models/tiny/model.safetensors", Body=(other / "model.safetensors").read_bytes()
    )
    with pytest.raises(CheckpointMismatchError, match="the run was created with"):
        Runtime(settings).segmenter(dataclasses.replace(spec))
