"""The version of the code a process runs: ``<package version>+g<commit>[.dirty]``, read once, when the process
starts (the module is imported by the producer, the worker and training as they start).

The commit comes from git where the package sits in a checkout (``.dirty`` when anything under ``pixelperfect/``
differs from that commit, untracked files included), else from ``PIXELPERFECT_COMMIT`` — a Docker build argument
(the image has no ``.git``; ``docker compose build`` passes it, see docs/deploy.md), itself ``<commit>[.dirty]`` —
and ``+unknown`` when neither says. A run records the version that created it (``runs.code_version``), and a worker
running other code refuses the run's images until the user accepts the change (``submit --allow-version-change``):
results of two versions never mix without a word.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path


def _installed_version() -> str:
    """The installed distribution's version (what ``pixelperfect.__version__`` says), read here rather than
    imported from the package root, which loads the notebook API lazily: root -> api -> ... -> version -> root
    would be a circle of packages (tests/test_architecture.py)."""
    try:
        return version("pixelperfect")
    except PackageNotFoundError:  # running from a source tree without installation
        return "0.0.0+local"


__version__ = _installed_version()

#: The environment variable a build without ``.git`` (the Docker image) names the commit in.
COMMIT_ENV = "PIXELPERFECT_COMMIT"
#: The image's failure reason when a worker refuses it for running other code than its run's.
VERSION_CHANGED = "version_changed"
#: The key of ``runs.settings`` by which the user accepts workers of other code than the run's
#: (``submit --allow-version-change``).
ALLOW_VERSION_CHANGE = "allow_version_change"


def describe(package_dir: Path | None = None, env: Mapping[str, str] | None = None) -> str:
    """``<version>+g<commit>[.dirty]`` of the package at ``package_dir`` (default: this one)."""
    base = __version__.split("+", 1)[0]
    commit = git_commit(package_dir or Path(__file__).resolve().parent)
    if commit is None:
        commit = (os.environ if env is None else env).get(COMMIT_ENV, "").strip() or None
    return f"{base}+g{commit}" if commit else f"{base}+unknown"


def git_commit(package_dir: Path) -> str | None:
    """``<12 hex digits>[.dirty]`` of the checkout holding ``package_dir``, or None: no git, no checkout, or the
    package is not tracked there (an installed copy inside someone else's repository)."""
    root = str(package_dir.parent)

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", root, *args], capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout if done.returncode == 0 else None

    head = git("rev-parse", "--short=12", "HEAD")
    tracked = git("ls-files", "--", f"{package_dir.name}/__init__.py")
    if not head or not tracked:
        return None
    status = git("status", "--porcelain", "--", package_dir.name)
    if status is None:
        return None
    return head.strip() + (".dirty" if status.strip() else "")


CODE_VERSION = describe()
