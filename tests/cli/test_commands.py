"""The command line as a user runs it (subprocesses, the installed console script)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import PIXELPERFECT, service_env


def run(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PIXELPERFECT, *args], capture_output=True, text=True, env=env or service_env(), cwd=cwd, timeout=300
    )


def test_phantoms_are_deterministic(tmp_path: Path) -> None:
    for name in ("a", "b"):
        out = run("phantoms", str(tmp_path / name), "--n", "3", "--seed", "5", "--size", "128")
        assert out.returncode == 0, out.stderr
    for rel in ("images/phantom-00002.png", "masks/phantom-00002.png", "labels.csv"):
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    header = (tmp_path / "a" / "labels.csv").read_text().splitlines()[0]
    assert header == "patientId,x,y,width,height,Target"


@pytest.mark.slow
@pytest.mark.integration
def test_demo_prints_table_and_paths_then_status_json(tmp_path: Path) -> None:
    out = run("demo", "--workdir", str(tmp_path / "demo"), "--n", "3", "--size", "256", cwd=tmp_path)
    assert out.returncode == 0, out.stderr + out.stdout
    for needle in ("sam_tiny", "grabcut", "raw", "clahe", "mean Dice", "database:", "masks:", "Findings", "95 % CI",
                   "prompt box", "do not say"):  # fmt: skip
        assert needle in out.stdout
    env = service_env(database_url=f"sqlite:///{tmp_path / 'demo' / 'pixelperfect.db'}")
    status = run("status", "demo-sam_tiny", "--json", env=env)
    assert status.returncode == 0, status.stderr
    info = json.loads(status.stdout)
    assert set(info) >= {"run", "images", "segments", "failures"}
    assert info["run"] == "demo-sam_tiny" and info["images"]["done"] == 3 and info["images"]["queued"] == 0
    assert info["segments"] > 0 and info["failures"] == {}


def test_errors_are_clear_and_exit_nonzero(tmp_path: Path) -> None:
    env = service_env(database_url=f"sqlite:///{tmp_path / 'x.db'}")
    missing = run("status", "nope", env=env)
    assert missing.returncode == 2 and "no run named 'nope'" in missing.stderr
    (tmp_path / "imgs").mkdir()
    empty = run("submit", str(tmp_path / "imgs"), "--run", "r", "--model", "grabcut", env=env)
    assert empty.returncode == 2 and "no images under" in empty.stderr
    (tmp_path / "imgs" / "a.png").write_bytes(b"x")
    vit = run("submit", str(tmp_path / "imgs"), "--run", "r", "--model", "sam_vit_b", env=env)
    assert vit.returncode == 2 and "needs a checkpoint" in vit.stderr
    worker = run("worker", env=env)
    assert worker.returncode == 2 and "PIXELPERFECT_BROKER_URL is not set" in worker.stderr


@pytest.mark.integration
def test_submit_from_a_manifest_fails_a_traversal_key_and_does_the_rest(tmp_path: Path, phantom_dir: Path) -> None:
    manifest = tmp_path / "keys.txt"
    manifest.write_text("# three keys\nphantom-00000.png\nphantom-00001.png\n../escape.png\n")
    env = service_env(database_url=f"sqlite:///{tmp_path / 'm.db'}", store_url=f"file://{tmp_path / 'store'}")
    out = run("submit", str(phantom_dir / "images"), "--run", "m", "--model", "grabcut", "--manifest",
              str(manifest), env=env)  # fmt: skip
    assert out.returncode == 0, out.stderr + out.stdout
    status = json.loads(run("status", "m", "--json", env=env).stdout)
    assert status["images"] == {"queued": 0, "done": 2, "failed": 1}
    assert status["failures"] == {"invalid_key": 1}
