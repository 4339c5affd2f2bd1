"""PixelPerfect: segment chest X-ray archives with SAM on a message queue, and measure how far to trust it."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("pixelperfect")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+local"
