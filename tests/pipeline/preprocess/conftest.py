"""The imaging commands (``tune``, ``preview``) on a Typer app of their own."""

from __future__ import annotations

import pytest
import typer

from pixelperfect.cli.imaging import register


@pytest.fixture(scope="module")
def cli() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """test app"""

    register(app)
    return app
