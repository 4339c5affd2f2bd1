"""The worker's per-process runtime follows the process-wide settings without the settings module reaching up."""

from __future__ import annotations

from pathlib import Path

from pixelperfect.config import use_settings
from pixelperfect.worker.runtime import get_runtime
from tests.conftest import embedded_settings


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
