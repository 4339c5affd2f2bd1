"""``pixelperfect train --queue``: one task on the ``train`` queue, run by a real worker over the real Redis."""

from __future__ import annotations

import json
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, select

from pixelperfect.db.models import Run
from tests.conftest import PIXELPERFECT, ROOT, service_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]


class EventLog:
    """Every Celery event on the broker, captured the way Flower captures them (an event receiver)."""

    def __init__(self, broker_url: str) -> None:
        from celery import Celery

        self.app = Celery(broker=broker_url)
        self.events: list[dict[str, Any]] = []
        self.ready = threading.Event()
        self._receiver: Any = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.ready.wait(20), "event receiver did not start"

    def _run(self) -> None:
        with self.app.connection() as conn:
            self._receiver = self.app.events.Receiver(conn, handlers={"*": self.events.append})
            self.ready.set()
            self._receiver.capture(limit=None, timeout=None, wakeup=False)

    def stop(self) -> None:
        if self._receiver is not None:
            self._receiver.should_stop = True
        self.thread.join(10)


def test_train_runs_on_a_train_queue_worker(
    redis_url: str, pg_url: str, train_phantoms: Path, tiny_checkpoint: Path, tmp_path: Path, start_worker: Any
) -> None:
    env = service_env(broker_url=redis_url, database_url=pg_url, store_url=f"file://{tmp_path / 'store'}", device="cpu")
    start_worker(env, hostname="trainer@%h", extra=["--queues", "train"])
    events = EventLog(redis_url)
    out = tmp_path / "out"
    args = [
        PIXELPERFECT, "train", str(train_phantoms / "images"), "--gt-masks", str(train_phantoms / "masks"),
        "--model", "sam_tiny", "--checkpoint", str(tiny_checkpoint), "--out", str(out), "--max-steps", "40",
        "--lr", "1e-3", "--patience", "100", "--run", "queued-training", "--queue", "--wait",
    ]  # fmt: skip
    try:
        done = subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=240)
    finally:
        events.stop()
    assert done.returncode == 0, done.stdout + done.stderr
    assert "sent training queued-training to queue 'train'" in done.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 40 and f"val_dice_after {metrics['val_dice_after']:.4f}" in done.stdout

    status = subprocess.run(
        [PIXELPERFECT, "status", "queued-training", "--json"], env=env, cwd=ROOT, capture_output=True, text=True
    )
    assert status.returncode == 0, status.stderr
    cfg = json.loads((out / "config.json").read_text())
    n_images = cfg["data"]["train_images"] + cfg["data"]["val_images"]
    assert json.loads(status.stdout)["images"] == {"queued": 0, "done": n_images, "failed": 0}

    engine = create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.connect() as conn:
        run = conn.execute(select(Run)).one()
    engine.dispose()
    assert run.kind == "train" and run.settings["progress"]["phase"] == "done"
    assert run.settings["progress"]["step"] == 40

    mine = [e for e in events.events if e.get("type", "").startswith("task-")]
    received = [e for e in mine if e["type"] == "task-received"]
    assert [e["name"] for e in received] == ["pixelperfect.train"] and "trainer@" in received[0]["hostname"]
    progress = [e for e in mine if e["type"] == "task-progress"]
    assert progress and all(e["uuid"] == received[0]["uuid"] for e in progress)
    assert {"encoding", "training", "done"} <= {e["phase"] for e in progress}
    assert any(e["type"] == "task-succeeded" for e in mine)

    from celery.events.state import State  # what Flower keeps per task

    state = State()
    for event in mine[: mine.index(progress[-1]) + 1]:
        state.event(dict(event))
    task = state.tasks[received[0]["uuid"]]
    assert task.state == "PROGRESS" and task.phase == "done" and task.step == 40
