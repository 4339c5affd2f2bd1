"""Every command's help is readable at 80 columns: no line longer, no word broken or cut off."""

from __future__ import annotations

import os
import re
import subprocess
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from pixelperfect.cli import app
from tests.conftest import PIXELPERFECT

WIDTH = 80


def _commands() -> list[tuple[list[str], Any]]:
    root: Any = typer.main.get_command(app)
    found: list[tuple[list[str], Any]] = []
    for name, command in root.commands.items():
        if hasattr(command, "commands"):  # a group: its subcommands
            found += [([name, sub], c) for sub, c in command.commands.items()]
        else:
            found.append(([name], command))
    return found


def _words(text: str) -> set[str]:
    return set(text.split())


def _assert_readable(out: str, command: Any) -> None:
    long = [line for line in out.splitlines() if len(line) > WIDTH]
    assert not long, f"lines over {WIDTH} columns: {long}"
    assert "…" not in out, "help text cut off"
    shown = _words(out)
    for param in command.params:
        for word in _words(getattr(param, "help", None) or ""):
            assert word in shown, f"{param.name}: word {word!r} broken or missing in\n{out}"
        for opt in getattr(param, "opts", []):  # option names whole, never cut
            assert not opt.startswith("-") or re.search(rf"(^|\s){re.escape(opt)}(\s|$)", out), opt


def test_every_command_help_fits_80_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", str(WIDTH))
    commands = _commands()
    assert {" ".join(p) for p, _ in commands} >= {"submit", "status", "worker", "retry", "report", "train", "demo",
                                                 "phantoms", "tune", "preview", "db upgrade"}  # fmt: skip
    for path, command in commands:
        result = CliRunner().invoke(app, [*path, "--help"], terminal_width=WIDTH)
        assert result.exit_code == 0, result.output
        _assert_readable(result.output, command)


def test_console_script_submit_help_at_80_columns() -> None:
    env = {**os.environ, "COLUMNS": str(WIDTH)}
    out = subprocess.run([PIXELPERFECT, "submit", "--help"], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    submit = dict(_commands_by_name())["submit"]
    _assert_readable(out.stdout, submit)
    assert "--annotations-format" in out.stdout and "--points-per-side" in out.stdout


def _commands_by_name() -> list[tuple[str, Any]]:
    return [(" ".join(p), c) for p, c in _commands()]
