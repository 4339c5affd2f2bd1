"""The code version a process records: ``<version>+g<commit>[.dirty]`` from git, else from the Docker build
argument, else ``+unknown``."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from pixelperfect import __version__
from pixelperfect.version import CODE_VERSION, COMMIT_ENV, describe, git_commit

BASE = __version__.split("+", 1)[0]


def _git(root: Path, *args: str) -> str:
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, env=env, check=True)
    return done.stdout.strip()


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A git checkout holding a ``pixelperfect`` package, committed."""
    package = tmp_path / "repo" / "pixelperfect"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "stage.py").write_text("X = 1\n")
    (tmp_path / "repo" / "notes.txt").write_text("not code")
    _git(tmp_path / "repo", "init", "-q")
    _git(tmp_path / "repo", "add", ".")
    _git(tmp_path / "repo", "commit", "-q", "-m", "first")
    return package


def test_a_clean_checkout_is_its_commit(checkout: Path) -> None:
    head = _git(checkout.parent, "rev-parse", "--short=12", "HEAD")
    assert git_commit(checkout) == head and len(head) == 12
    assert describe(checkout, env={COMMIT_ENV: "ignored"}) == f"{BASE}+g{head}"  # git wins where there is .git
    (checkout.parent / "notes.txt").write_text("changed, but not code")
    assert describe(checkout, env={}) == f"{BASE}+g{head}"


@pytest.mark.parametrize("change", ["edit", "new file"])
def test_a_changed_package_is_dirty(checkout: Path, change: str) -> None:
    head = _git(checkout.parent, "rev-parse", "--short=12", "HEAD")
    if change == "edit":
        (checkout / "stage.py").write_text("X = 2\n")
    else:
        (checkout / "extra.py").write_text("")
    assert describe(checkout, env={}) == f"{BASE}+g{head}.dirty"


def test_without_git_the_build_argument_names_the_commit(tmp_path: Path) -> None:
    package = tmp_path / "site-packages" / "pixelperfect"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    assert git_commit(package) is None
    assert describe(package, env={COMMIT_ENV: "0123456789ab.dirty"}) == f"{BASE}+g0123456789ab.dirty"
    assert describe(package, env={COMMIT_ENV: " "}) == f"{BASE}+unknown"
    assert describe(package, env={}) == f"{BASE}+unknown"


def test_a_package_another_repository_does_not_track_is_not_its_commit(checkout: Path) -> None:
    vendored = checkout.parent / "venv" / "pixelperfect"  # an installed copy inside someone's checkout
    vendored.mkdir(parents=True)
    (vendored / "__init__.py").write_text("")
    assert git_commit(vendored) is None


def test_this_process_knows_its_version() -> None:
    assert CODE_VERSION.startswith(f"{BASE}+") and len(CODE_VERSION) <= 40  # runs.code_version is String(40)
