"""What every command shares, once: the consoles, ``fail``, the settings with a command's overrides, and the one
error handler (:class:`GuardedGroup`) that turns the known failures of services — connection refused,
authentication failed, missing tables, bucket not found, permission denied, DNS failure, a failed preflight check
— into one line on stderr naming the setting and the address (never a password), exit status 2. ``--debug``
(``pixelperfect --debug COMMAND``) or ``PIXELPERFECT_DEBUG=1`` shows the traceback instead; anything else (a bug)
shows its traceback as ever."""

from __future__ import annotations

import os
import sys
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from pixelperfect.config import Settings, get_settings, use_settings

#: Piped output (CI logs, scripts) gets 140 columns instead of rich's 80, so tables keep their headers.
PIPE_WIDTH = 140
#: Exit status of a clear, expected error (bad option, unknown run, failed preflight, a service that refuses).
EXIT_ERROR = 2

console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else PIPE_WIDTH)
err = Console(stderr=True, soft_wrap=True, width=None if sys.stderr.isatty() else PIPE_WIDTH)

#: Set by ``pixelperfect --debug``: expected failures show their traceback.
DEBUG = False


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    """Print ``error: message`` on stderr and leave the command with exit status ``code``."""
    err.print(f"[bold red]error:[/] {escape(message)}")
    raise typer.Exit(code)


def command_settings(**overrides: Any) -> Settings:
    """The process-wide settings (environment ``PIXELPERFECT_*``) with the non-``None`` ``overrides`` applied,
    installed process-wide (``config.use_settings``) so every layer below sees the same object."""
    base = get_settings()
    values = {k: v for k, v in overrides.items() if v is not None}
    settings = base.model_copy(update=values) if values else base
    use_settings(settings)
    return settings


def debugging() -> bool:
    """``--debug`` given, or ``PIXELPERFECT_DEBUG`` set true."""
    return DEBUG or os.environ.get("PIXELPERFECT_DEBUG", "").strip().lower() in ("1", "true", "yes", "on")


def explain_failure(exc: BaseException) -> str | None:
    """The one line for a known failure (see the module docstring), or None."""
    if type(exc).__name__ == "ValidationError" and type(exc).__module__.startswith("pydantic"):
        errors = exc.errors()  # type: ignore[attr-defined]
        where = ", ".join(f"PIXELPERFECT_{'_'.join(str(p) for p in e['loc']).upper()}" for e in errors[:3])
        return f"settings: {where or 'PIXELPERFECT_*'}: {errors[0]['msg'] if errors else exc}"
    from pixelperfect.preflight import explain

    try:
        settings = get_settings()
    except Exception:
        return None
    return explain(exc, settings)


class GuardedGroup(TyperGroup):
    """The ``pixelperfect`` command group: every command's known failures end in one line (see the module
    docstring); click's own exits and errors pass through."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as exc:
            if debugging() or type(exc).__module__.split(".")[0] in ("typer", "click"):
                raise  # typer's (and click's) own exits, aborts and usage errors
            line = explain_failure(exc)
            if line is None:
                raise
            fail(f"{line}{'' if DEBUG else ' (--debug shows the traceback)'}")
