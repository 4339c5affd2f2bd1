"""PixelPerfect: segment chest X-ray archives with SAM on a message queue, and measure how far to trust it.

``import pixelperfect as pp`` is light: the notebook API (``pp.submit``, ``pp.runs``, ``pp.run``, ``pp.compare``,
``pp.Run``; docs/python-api.md) loads on first use of one of its names, and never loads torch for reading results.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("pixelperfect")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+local"

if TYPE_CHECKING:  # pragma: no cover - for type checkers and editors; at run time __getattr__ loads them
    from pixelperfect.api import MaskMissingError as MaskMissingError
    from pixelperfect.api import Run as Run
    from pixelperfect.api import compare as compare
    from pixelperfect.api import findings as findings
    from pixelperfect.api import plan as plan
    from pixelperfect.api import run as run
    from pixelperfect.api import runs as runs
    from pixelperfect.api import submit as submit

#: The names ``pp.<name>`` takes from :mod:`pixelperfect.api`.
API = ("MaskMissingError", "Run", "compare", "findings", "plan", "run", "runs", "submit")

__all__ = ["__version__", *API]


def __getattr__(name: str) -> Any:
    if name in API:
        from pixelperfect import api

        return getattr(api, name)
    raise AttributeError(f"module 'pixelperfect' has no attribute {name!r}")
