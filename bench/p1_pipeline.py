"""P1: does the pipeline hide its own work behind the model?

The same 1024² phantom PNGs (8-bit), ``sam_tiny`` at the standard 1024² input, one variant (``raw``), two boxes
per image (each with the default K = 4 perturbations), the embedded configuration (file:// store, SQLite):

* **model-only** time per image: ``encode`` + ``predict_boxes`` on inputs decoded and prepared beforehand, in the
  same encoder chunks the worker uses;
* **end-to-end** time per image: ``run_batch`` on the images' keys (read, decode, preprocess, model, scores, mask
  PNGs, store, one DB transaction), measured alternately with the model-only pass;
* **non-model CPU** time per image: process CPU seconds of ``run_batch`` when the model is replaced by a replay of
  its recorded outputs, i.e. everything the worker does besides the model, summed over all its threads;
* **pipeline capacity**: images/s of that replayed run — the most one worker process could feed a GPU on this
  CPU — and the cores its threads kept busy;
* **non-model CPU on RSNA-format DICOMs**: the same replay on the same images stored as the RSNA challenge stores
  them (8-bit JPEG baseline DICOM, :func:`pixelperfect.synthetic.archive_phantoms.rsna_dicom`), beside the PNG figure.

The model gets one torch thread; on this 2-core machine that leaves the second core to the pipeline's threads,
as a GPU leaves the host CPU to them.

Run: ``python bench/p1_pipeline.py [--images 16]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
from common import Measure, Stopwatch, load_average, stage_ms, write_archive, write_tiny_checkpoint

RATIO_GOAL = "<=1.05"
CPU_GOAL = "<=40"


class ReplaySegmenter:
    """Stands in for the model: ``prepare`` is the real one (it is pipeline work), ``encode`` does nothing and
    ``predict_boxes`` returns the prediction the real model made for the same boxes."""

    def __init__(self, real: Any, recorded: dict[bytes, Any]) -> None:
        self.name, self.real, self.recorded = real.name, real, recorded

    def prepare(self, image: np.ndarray, original_size: tuple[int, int] | None = None) -> Any:
        return self.real.prepare(image, original_size)

    def encode(self, images: list[Any]) -> list[Any]:
        return [None] * len(images)

    def predict_boxes(self, embedding: Any, boxes: np.ndarray) -> Any:
        found = self.recorded.get(np.asarray(boxes, np.float64).tobytes())
        if found is None:  # another key (the DICOM copy): its jitter, seeded by the key, differs; same-size stand-in
            found = next(p for p in self.recorded.values() if len(p.masks) == len(boxes))
        return found


class RecordingSegmenter(ReplaySegmenter):
    """The real model, remembering each prediction by its boxes."""

    def encode(self, images: list[Any]) -> list[Any]:
        return list(self.real.encode(images))

    def predict_boxes(self, embedding: Any, boxes: np.ndarray) -> Any:
        prediction = self.real.predict_boxes(embedding, boxes)
        self.recorded[np.asarray(boxes, np.float64).tobytes()] = prediction
        return prediction


def run(n_images: int = 16, repeats: int = 2) -> list[Measure]:
    import torch

    from pixelperfect.config import Settings, use_settings
    from pixelperfect.embedded import SubmitRequest, submit
    from pixelperfect.pipeline.decode.reader import decode_image
    from pixelperfect.pipeline.stages import ImageInput, prepare_image
    from pixelperfect.storage import open_store
    from pixelperfect.synthetic.archive_phantoms import rsna_dicom
    from pixelperfect.worker.batch import run_batch
    from pixelperfect.worker.runtime import get_runtime

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="pp-p1-") as tmp_dir:
        tmp = Path(tmp_dir)
        images, labels = write_archive(tmp / "archive", n_images, 1024)
        checkpoint = write_tiny_checkpoint(tmp / "tiny1024.pth", 1024)
        settings = Settings(
            database_url=f"sqlite:///{tmp / 'pp.db'}",
            store_url=f"file://{tmp / 'store'}",
            model="sam_tiny",
            device="cpu",
            batch_size=n_images,
            encoder_batch=2,  # CPU: batching the encoder gains nothing, small groups pipeline finer
        )
        use_settings(settings)

        def new_run(name: str, source: Path = images) -> tuple[int, list[str]]:
            req = SubmitRequest(source=str(source), run=name, variants=["raw"], model="sam_tiny",
                                checkpoint=str(checkpoint), annotations=str(labels))  # fmt: skip
            result = submit(req, settings, execute=False)
            keys = sorted(p.name for p in source.iterdir())
            return result.run_id, keys

        rt = get_runtime()
        warm_id, keys = new_run("warm")
        run_batch(warm_id, keys[:2])  # loads the model once; every later batch reuses it
        run_spec = rt.run_spec(warm_id)
        real = rt.segmenter(run_spec)

        # the model-only inputs: decoded, preprocessed and prepared beforehand (not timed)
        store = open_store(str(images))
        prepared = []
        for key in keys:
            pixels = decode_image(store.get(key), key).pixels
            index = int(key.split("-")[1].split(".")[0])
            boxes = [list(b) for b in two_boxes_for(index)]
            prepared.append(prepare_image(ImageInput(key, pixels, boxes), run_spec.variants, real, run_spec.process))

        def model_only() -> float:
            t0 = time.perf_counter()
            for start in range(0, len(prepared), settings.encoder_batch):
                chunk = prepared[start : start + settings.encoder_batch]
                embeddings = real.encode([p.inputs["raw"] for p in chunk])
                for prep, emb in zip(chunk, embeddings, strict=True):
                    real.predict_boxes(emb, prep.boxes)
            return (time.perf_counter() - t0) / len(prepared)

        model_s, e2e_s = [], []
        for r in range(repeats):
            model_s.append(model_only())
            run_id, _ = new_run(f"e2e-{r}")
            t0 = time.perf_counter()
            summary = run_batch(run_id, keys)
            e2e_s.append((time.perf_counter() - t0) / len(keys))
            if summary.done != len(keys) or summary.segments != 2 * len(keys):
                raise RuntimeError(f"end-to-end run did not finish every image: {summary}")

        # non-model CPU: the same batch with the model replaced by a replay of its outputs
        recorded: dict[bytes, Any] = {}
        key_model = (run_spec.model, run_spec.checkpoint)
        rt._segmenters[key_model] = RecordingSegmenter(real, recorded)
        rec_id, _ = new_run("record")
        run_batch(rec_id, keys)
        rt._segmenters[key_model] = ReplaySegmenter(real, recorded)
        cpu_ms, capacity, cores = [], [], []
        for r in range(repeats):
            replay_id, _ = new_run(f"replay-{r}")
            with Stopwatch() as sw:
                run_batch(replay_id, keys)
            cpu_ms.append(sw.cpu / len(keys) * 1000)
            capacity.append(len(keys) / sw.wall)
            cores.append(sw.cpu / sw.wall)
        dicoms = tmp / "rsna"  # the same films as RSNA stores them: the decoder's share of the host CPU
        dicoms.mkdir()
        for key in keys:
            pixels = decode_image(store.get(key), key).pixels
            (dicoms / f"{key.rsplit('.', 1)[0]}.dcm").write_bytes(rsna_dicom(pixels, key.rsplit(".", 1)[0]))
        decode_image((dicoms / keys[0].replace(".png", ".dcm")).read_bytes(), "warm.dcm")  # compiles as a worker has
        dicom_ms = []
        for r in range(repeats):
            replay_id, dicom_keys = new_run(f"replay-dicom-{r}", dicoms)
            with Stopwatch() as sw:
                summary = run_batch(replay_id, dicom_keys)
            if summary.done != len(keys):
                raise RuntimeError(f"the DICOM replay did not finish every image: {summary}")
            dicom_ms.append(sw.cpu / len(keys) * 1000)
        rt._segmenters[key_model] = real
        stages = stage_ms(settings.database_url, "replay-0")
        use_settings(None)

    model, e2e = statistics.median(model_s), statistics.median(e2e_s)
    ratio = Measure(
        "P1", "end-to-end/model-only time per image (sam_tiny 1024², raw, 2 boxes)", e2e / model, goal=RATIO_GOAL,
        details=[f"end-to-end {e2e * 1000:.0f} ms/image, model-only {model * 1000:.0f} ms/image; per repeat "
                 f"e2e {[round(x * 1000) for x in e2e_s]} ms, model {[round(x * 1000) for x in model_s]} ms; "
                 f"{n_images} images, encoder_batch 2, 1 torch thread, load average {load_average():.2f}"],
    )  # fmt: skip
    cpu = Measure(
        "P1", "non-model CPU time per 1024² PNG image", statistics.median(cpu_ms), "ms", goal=CPU_GOAL,
        details=[f"per repeat {[round(x, 1) for x in cpu_ms]} ms; stage means (wall, ms, from the run's timings): "
                 + ", ".join(f"{k} {v:.1f}" for k, v in stages.items())],
    )  # fmt: skip
    rsna = Measure(
        "P1", "non-model CPU time per 1024² RSNA-format JPEG DICOM image", statistics.median(dicom_ms), "ms",
        goal=CPU_GOAL,
        details=[f"per repeat {[round(x, 1) for x in dicom_ms]} ms; the same films and replay as the PNG line, "
                 "stored as 8-bit JPEG baseline DICOM (RSNA's format): the difference is the DICOM decode"],
    )  # fmt: skip
    best = int(np.argmax(capacity))
    rate = Measure(
        "P1", "pipeline capacity with a zero-cost model (replayed outputs), one process", capacity[best],
        "images/s",
        details=[f"{cores[best]:.2f} cores busy on average of {os.cpu_count()} (the pipeline's threads: I/O, post, "
                 f"upload); per repeat {[round(x, 1) for x in capacity]} images/s: the most one worker process "
                 f"feeds a GPU on this CPU. 250 images/s takes ~{250 * statistics.median(cpu_ms) / 1000:.1f} cores "
                 f"of it (250 x the non-model CPU time)"],
    )  # fmt: skip
    return [ratio, cpu, rsna, rate]


def two_boxes_for(index: int) -> list[tuple[float, float, float, float]]:
    from common import two_boxes

    return two_boxes(index, 1024)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    for measure in run(args.images, args.repeats):
        measure.print()


if __name__ == "__main__":
    main()
