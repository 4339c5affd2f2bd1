"""The worker's per-process runtime: it follows the process-wide settings without the settings module reaching up,
loads a model once per process, and refuses a checkpoint other than the run's."""

from __future__ import annotations

from pathlib import Path

import pytest

from pixelperfect.config import use_settings
from pixelperfect.pipeline.model.weights import sha256_hex
from pixelperfect.worker.runtime import CheckpointMismatchError, RunSpec, Runtime, get_runtime
from tests.conftest import count_model_loads, embedded_settings


def test_runtime_is_rebuilt_when_the_settings_object_is_replaced(tmp_path: Path) -> None:
    first = embedded_settings(tmp_path)  # installs it process-wide
    rt = get_runtime()
    assert rt.settings is first and get_runtime() is rt  # cached while the settings stay
    use_settings(first)
    assert get_runtime() is rt  # the same object again: handles are kept
    second = first.model_copy(update={"store_url": f"file://{tmp_path / 'other'}"})
    use_settings(second)
    fresh = get_runtime()
    assert fresh is not rt and fresh.settings is second


def test_settings_module_imports_nothing_of_the_package() -> None:
    import pixelperfect.config as config

    source = Path(config.__file__).read_text()
    assert "from pixelperfect" not in source and "import pixelperfect" not in source


def test_worker_refuses_a_checkpoint_other_than_the_runs(
    tmp_path: Path, tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = embedded_settings(tmp_path)
    spec = RunSpec(
        id=1,
        name="r",
        source_url="file:///x",
        store_url="file:///y",
        model="sam_tiny",
        checkpoint=str(tiny_checkpoint),
        checkpoint_sha256="0" * 64,
        variants=(),
        process=None,
    )  # type: ignore[arg-type]
    with pytest.raises(CheckpointMismatchError, match="sha256"):
        Runtime(settings).segmenter(spec)
    ok = RunSpec(**{**spec.__dict__, "checkpoint_sha256": sha256_hex(tiny_checkpoint.read_bytes())})
    rt, loads = Runtime(settings), count_model_loads(monkeypatch)
    assert rt.segmenter(ok) is rt.segmenter(ok) and loads == [ok.model]  # loaded once per process
