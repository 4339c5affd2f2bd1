"""Pieces of the producer-crash test and the chaos soak: a tiny archive of any size (hard links of one small X-ray),
real ``pixelperfect worker`` processes whose model costs nothing but an optional fixed time per image (the
pipeline, store, database and broker are all real), and the figures a soak prints last.

Run as ``python -m tests.faults.soak worker …``: the ``pixelperfect`` command line with the model replaced (in this
process and the pool processes it forks) by :class:`FixedCostSegmenter`; ``PP_MODEL_SECONDS`` sets its time per
image, spent sleeping as a GPU would (no host CPU), so SIGKILLs land inside the model as they do in production.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tests.conftest import ROOT

SIZE = 64  # px: the pipeline's work per image stays small, the delivery paths are the same at any size


class FixedCostSegmenter:
    """A stand-in for SAM: ``encode`` sleeps ``seconds`` per image and returns the image's shape; each box's mask
    is the filled box (clipped to the image) with predicted IoU 0.9 (the replayed-output idea of ``make bench``)."""

    name = "fixed-cost"

    def __init__(self, seconds: float = 0.0) -> None:
        self.seconds = seconds

    def prepare(self, image: np.ndarray) -> tuple[int, int]:
        return (int(image.shape[0]), int(image.shape[1]))

    def encode(self, images: Sequence[Any]) -> list[Any]:
        if self.seconds:
            time.sleep(self.seconds * len(images))
        return list(images)

    def predict_boxes(self, embedding: tuple[int, int], boxes: np.ndarray) -> Any:
        from pixelperfect.pipeline.model.protocol import MaskPrediction

        h, w = embedding
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        masks = np.zeros((len(boxes), h, w), bool)
        for i, (x1, y1, x2, y2) in enumerate(boxes):
            masks[i, max(0, int(y1)) : max(0, min(h, int(y2))), max(0, int(x1)) : max(0, min(w, int(x2)))] = True
        m = len(boxes)
        return MaskPrediction(masks, np.full((m, 3), 0.9, np.float32), np.zeros(m, np.int64), np.ones(m, np.float32))

    def predict_points(self, embedding: tuple[int, int], points: np.ndarray, labels: np.ndarray) -> Any:
        pts = np.asarray(points, np.float64).reshape(len(points), -1, 2)
        boxes = np.stack([pts[:, :, 0].min(1) - 4, pts[:, :, 1].min(1) - 4, pts[:, :, 0].max(1) + 4,
                          pts[:, :, 1].max(1) + 4], axis=1)  # fmt: skip
        return self.predict_boxes(embedding, boxes)


def install(seconds: float) -> None:
    """Every run's model in this process (and its forks) is a :class:`FixedCostSegmenter`."""
    from pixelperfect.worker import runtime

    def segmenter(self: Any, run: Any) -> Any:
        with self._lock:
            return self._segmenters.setdefault((run.model, run.checkpoint), FixedCostSegmenter(seconds))

    runtime.Runtime.segmenter = segmenter  # type: ignore[method-assign]


#: Hard links per copy of the archive's PNG (ext4's limit is 65,000).
LINKS_PER_FILE = 50_000


def write_archive(out: Path, n: int) -> tuple[Path, Path, Path]:
    """``n`` keys ``img-<i>.png`` under ``out/images`` (hard links of one 64² PNG, a fresh copy every
    :data:`LINKS_PER_FILE`: ext4 allows 65,000 links to a file), an RSNA CSV with one box each, and a manifest of
    the keys. Returns (images dir, labels CSV, manifest)."""
    import cv2

    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    pixels = (80 + 60 * np.sin(xx / 7.0) * np.cos(yy / 9.0)).astype(np.uint8)
    pixels[20:44, 12:30] = 200
    ok, png = cv2.imencode(".png", pixels)
    assert ok
    first = images / "img-0000000.png"
    with (out / "labels.csv").open("w") as labels, (out / "manifest.txt").open("w") as manifest:
        labels.write("patientId,x,y,width,height,Target\n")
        for i in range(n):
            name = f"img-{i:07d}.png"
            if i % LINKS_PER_FILE == 0:  # a file of its own, which the next keys link to
                first = images / name
                first.write_bytes(png.tobytes())
            else:
                with contextlib.suppress(FileExistsError):
                    os.link(first, images / name)
            labels.write(f"img-{i:07d},10,18,24,28,1\n")
            manifest.write(name + "\n")
    return images, out / "labels.csv", out / "manifest.txt"


class SoakWorker:
    """``python -m tests.faults.soak worker``: a real Celery worker with the fixed-cost model."""

    def __init__(self, env: dict[str, str], log: Path, hostname: str, seconds: float = 0.0) -> None:
        self.env, self.log, self.hostname = {**env, "PP_MODEL_SECONDS": str(seconds)}, log, hostname
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        fh = self.log.open("ab")
        cmd = [sys.executable, "-m", "tests.faults.soak", "worker", "--hostname", self.hostname, "--concurrency", "1"]
        self.proc = subprocess.Popen(cmd, env=self.env, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT,
                                     start_new_session=True)  # fmt: skip
        fh.close()

    def pool_pids(self) -> list[int]:
        assert self.proc is not None
        try:
            return [int(p) for p in Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()]
        except OSError:
            return []

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if " ready." in self.log.read_text(errors="replace"):
                return
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited:\n{self.log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.2)
        raise TimeoutError(f"worker {self.hostname} not ready after {timeout}s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


def model_work(database_url: str, run_id: int) -> tuple[int, int]:
    from pixelperfect.db import control
    from pixelperfect.db.session import session_scope

    with session_scope(database_url) as session:
        return control.model_work(session, run_id=run_id)


if __name__ == "__main__":
    install(float(os.environ.get("PP_MODEL_SECONDS", "0") or 0))
    from pixelperfect.cli import app

    sys.argv[0] = "pixelperfect"
    app()
