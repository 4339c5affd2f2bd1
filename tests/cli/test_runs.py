"""``runs``, ``cancel`` and ``delete`` as a user runs them (the console script, SQLite and a local store): two runs
over the same image keys, one deleted, the other untouched; unknown names and a missing ``--yes`` exit 2."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import PIXELPERFECT, service_env

pytestmark = pytest.mark.integration


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PIXELPERFECT, *args], capture_output=True, text=True, env=env, timeout=300, stdin=subprocess.DEVNULL
    )


def test_runs_cancel_delete_from_the_command_line(tmp_path: Path, phantom_dir: Path) -> None:
    store = tmp_path / "store"
    env = service_env(database_url=f"sqlite:///{tmp_path / 'pp.db'}", store_url=f"file://{store}", device="cpu")
    manifest = tmp_path / "keys.txt"
    manifest.write_text("".join(f"phantom-{i:05d}.png\n" for i in range(3)))
    for name in ("alpha", "beta"):
        out = run(env, "submit", str(phantom_dir / "images"), "--run", name, "--model", "grabcut",
                  "--annotations", str(phantom_dir / "labels.csv"), "--manifest", str(manifest))  # fmt: skip
        assert out.returncode == 0, out.stderr
    listed = run(env, "runs", "--json")
    assert listed.returncode == 0, listed.stderr
    runs = {r["run"]: r for r in json.loads(listed.stdout)}
    assert set(runs) == {"alpha", "beta"}
    assert runs["alpha"]["images"] == {"queued": 0, "done": 3, "failed": 0, "cancelled": 0}
    assert runs["alpha"]["model"] == "grabcut" and runs["alpha"]["variants"] == ["raw"]
    assert runs["alpha"]["state"] == "active" and runs["alpha"]["created"]
    table = run(env, "runs")
    assert table.returncode == 0 and "alpha" in table.stdout and "beta" in table.stdout

    beta_masks = sorted(p.relative_to(store) for p in (store / "beta").rglob("*.png"))
    assert beta_masks and (store / "alpha" / "masks").is_dir()

    typo = run(env, "cancel", "alhpa")
    assert typo.returncode == 2 and "no run named 'alhpa'" in typo.stderr and "alpha" in typo.stderr
    typo = run(env, "delete", "betta", "--yes")
    assert typo.returncode == 2 and "beta" in typo.stderr
    no_tty = run(env, "delete", "alpha")
    assert no_tty.returncode == 2 and "without --yes" in no_tty.stderr
    assert (store / "alpha" / "masks").is_dir()

    gone = run(env, "delete", "alpha", "--yes")
    assert gone.returncode == 0, gone.stderr
    assert "deleted" in gone.stdout
    assert not (store / "alpha").exists()  # the run's masks and their emptied directories
    assert sorted(p.relative_to(store) for p in (store / "beta").rglob("*.png")) == beta_masks
    runs = {r["run"]: r for r in json.loads(run(env, "runs", "--json").stdout)}
    assert set(runs) == {"beta"} and runs["beta"]["images"]["done"] == 3

    cancelled = run(env, "cancel", "beta")
    assert cancelled.returncode == 0 and "0 queued image(s) cancelled" in cancelled.stdout
    status = json.loads(run(env, "runs", "--json").stdout)[0]
    assert status["state"] == "cancelled" and status["images"]["done"] == 3
    resumed = run(env, "submit", str(phantom_dir / "images"), "--run", "beta", "--model", "grabcut",
                  "--annotations", str(phantom_dir / "labels.csv"), "--manifest", str(manifest))  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(run(env, "runs", "--json").stdout)[0]["state"] == "active"


def test_delete_asks_on_a_terminal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from pixelperfect.cli import app
    from pixelperfect.db import repo
    from pixelperfect.db.migrate import upgrade
    from pixelperfect.db.session import session_scope
    from tests.db.test_repo import RUN_FIELDS

    url = f"sqlite:///{tmp_path / 'pp.db'}"
    monkeypatch.setenv("PIXELPERFECT_DATABASE_URL", url)
    upgrade(url)
    with session_scope(url) as s:
        repo.create_run(s, name="asked", fields={**RUN_FIELDS, "store_url": f"file://{tmp_path / 'store'}"})
    monkeypatch.setattr("pixelperfect.cli.runs._interactive", lambda: True)
    runner = CliRunner()
    no = runner.invoke(app, ["delete", "asked"], input="n\n")
    assert no.exit_code == 1 and "Delete run 'asked'" in no.output
    yes = runner.invoke(app, ["delete", "asked"], input="y\n")
    assert yes.exit_code == 0 and "deleted" in yes.output, yes.output
    with session_scope(url) as s:
        assert repo.get_run(s, name="asked") is None
