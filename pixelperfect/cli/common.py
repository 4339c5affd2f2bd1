"""What every command shares, once: the consoles, ``fail`` and the settings with a command's overrides."""

from __future__ import annotations

import sys
from typing import Any, NoReturn

import typer
from rich.console import Console

from pixelperfect.config import Settings, get_settings, use_settings

#: Piped output (CI logs, scripts) gets 140 columns instead of rich's 80, so tables keep their headers.
PIPE_WIDTH = 140

console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else PIPE_WIDTH)
err = Console(stderr=True, soft_wrap=True, width=None if sys.stderr.isatty() else PIPE_WIDTH)


def fail(message: str, code: int = 2) -> NoReturn:
    """Print ``error: message`` on stderr and leave the command with exit status ``code``."""
    err.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


def command_settings(**overrides: Any) -> Settings:
    """The process-wide settings (environment ``PIXELPERFECT_*``) with the non-``None`` ``overrides`` applied,
    installed process-wide (``config.use_settings``) so every layer below sees the same object."""
    base = get_settings()
    values = {k: v for k, v in overrides.items() if v is not None}
    settings = base.model_copy(update=values) if values else base
    use_settings(settings)
    return settings
