"""Fixtures of the training tests: a phantom set large enough to split, one torch thread, a training config."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from pixelperfect.config import Settings


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Iterator[None]:
    """One intra-op thread: on the 2 shared cores of CI, two spinning threads per process make a step 10x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def train_phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 phantom X-rays of 256² px (18 with opacities): enough images to split by image."""
    from pixelperfect.synthetic.phantoms import write_phantoms

    out = tmp_path_factory.mktemp("train-phantoms")
    write_phantoms(out, 24, seed=3, size=256)
    return out


def train_settings(root: Path) -> Settings:
    """Settings for an in-process training under ``root`` (SQLite, file store, CPU, ``sam_tiny``)."""
    return Settings(
        broker_url=None,
        database_url=f"sqlite:///{root / 'pp.db'}",
        store_url=f"file://{root / 'store'}",
        model="sam_tiny",
        device="cpu",
    )
