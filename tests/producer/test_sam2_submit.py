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
from tests.conftest import embedded_settings


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
