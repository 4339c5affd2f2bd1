"""P10: end-to-end time per image with ``--output png,dicom-seg`` (or ``--outputs png,dicom-seg,dicom-sr``) ÷ with
``--output png`` (sam_tiny, 1024² DICOM phantoms, two box prompts, variants raw + clahe), runs interleaved so both
see the same machine load. Goal <= 1.10. With ``dicom-sr`` the SR build time per image is reported too.

``--mode embedded`` (default): no broker, the SEGs are built in-process after each batch's model work.
``--mode worker``: what a GPU worker does with a broker — each batch through ``run_batch`` with the SEGs handed
to queue ``seg`` (published, not built), timed; the ``pixelperfect.build_segs`` work on the ``seg`` queue is then
run and reported on its own (ms per image), not in the ratio."""

from __future__ import annotations

import argparse
import csv
import statistics
import tempfile
import time
from pathlib import Path

from common import Measure, load_average, stage_ms, two_boxes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--mode", choices=("embedded", "worker"), default="embedded")
    parser.add_argument("--outputs", default="png,dicom-seg", help="what is compared with png")
    args = parser.parse_args()
    dicom = args.outputs

    from pixelperfect.config import Settings, use_settings
    from pixelperfect.embedded import submit
    from pixelperfect.producer.enqueue import SubmitRequest
    from pixelperfect.synthetic.phantoms import write_phantoms
    from pixelperfect.worker import segout
    from pixelperfect.worker.batch import run_batch
    from pixelperfect.worker.segretry import build_segs

    sr_seconds: list[float] = []
    build_sr = segout.build_sr

    def timed_sr(*a, **k):  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        try:
            return build_sr(*a, **k)
        finally:
            sr_seconds.append(time.perf_counter() - t0)

    segout.build_sr = timed_sr  # type: ignore[assignment]

    work = Path(tempfile.mkdtemp(prefix="pp-p10-"))
    write_phantoms(work / "archive", args.images, seed=21, size=args.size, fmt="dicom")
    labels = work / "boxes.csv"
    with labels.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["patientId", "x", "y", "width", "height", "Target"])
        for i in range(args.images):
            for x1, y1, x2, y2 in two_boxes(i, args.size):
                writer.writerow([f"phantom-{i:05d}", x1, y1, x2 - x1, y2 - y1, 1])
    settings = Settings(
        database_url=f"sqlite:///{work / 'pp.db'}", store_url=f"file://{work / 'store'}", model="sam_tiny",
        device="cpu", batch_size=8, encoder_batch=4,
    )  # fmt: skip
    use_settings(settings)
    times: dict[str, list[float]] = {"png": [], dicom: []}
    cpu: dict[str, list[float]] = {"png": [], dicom: []}
    warm = SubmitRequest(source=str(work / "archive" / "images"), run="warm", variants=["raw", "clahe"],
                         annotations=str(labels), outputs=(dicom,))  # fmt: skip
    submit(warm, settings)  # model, highdicom and code paths warm before timing
    seg_queue: list[float] = []

    def run_one(req: SubmitRequest) -> tuple[float, float]:
        """Wall and CPU seconds of the run (embedded) or of its batches on the GPU worker (worker)."""
        started, cpu0 = time.perf_counter(), time.process_time()
        if args.mode == "embedded":
            submit(req, settings)
            return time.perf_counter() - started, time.process_time() - cpu0
        queued = submit(req, settings, execute=False)
        keys = image_keys(settings.database_url, queued.run_id)
        published: list[int] = []
        for start in range(0, len(keys), settings.batch_size):
            run_batch(queued.run_id, keys[start : start + settings.batch_size],
                      publish_segs=lambda _run, ids: published.extend(ids))  # fmt: skip
        timed = time.perf_counter() - started, time.process_time() - cpu0  # the registration included, as embedded
        if published:
            t0 = time.perf_counter()
            build_segs(queued.run_id, published)  # the seg queue's work, after the timed part
            seg_queue.append((time.perf_counter() - t0) / args.images)
        return timed

    for repeat in range(args.repeats):  # pairs run back to back, alternating which goes first
        for output in ("png", dicom) if repeat % 2 == 0 else (dicom, "png"):
            req = SubmitRequest(source=str(work / "archive" / "images"), run=f"{output}-{repeat}",
                                variants=["raw", "clahe"], annotations=str(labels), outputs=(output,))  # fmt: skip
            elapsed, cpu_s = run_one(req)
            times[output].append(elapsed / args.images)
            cpu[output].append(cpu_s / args.images)
    ratios = sorted(s / p for s, p in zip(times[dicom], times["png"], strict=True))
    cpu_ratio = statistics.median(cpu[dicom]) / statistics.median(cpu["png"])
    png, seg = statistics.median(times["png"]), statistics.median(times[dicom])
    seg_stage = statistics.median(
        stage_ms(settings.database_url, f"{dicom}-{r}").get("seg", 0.0) for r in range(args.repeats)
    )
    sr_ms = statistics.median(sr_seconds) * 1000 if sr_seconds else 0.0
    sr_line = [f"SR build (TID 1500, from the SEG; in the seg work above): {sr_ms:.1f} ms per SR, "
               f"{len(sr_seconds)} SRs, 2 per image"] if sr_seconds else []  # fmt: skip
    Measure(
        "P10",
        f"e2e time per image, {dicom.replace(',', '+')} / png (median of paired runs; {args.mode})",
        statistics.median(ratios),
        goal="<=1.10",
        details=[
            f"png {png * 1000:.0f} ms/image, {dicom} {seg * 1000:.0f} ms/image (medians of {args.repeats}; "
            f"{args.images} images {args.size}², 2 prompts, raw+clahe = 2 SEGs/image); load {load_average():.2f}",
            f"paired ratios {', '.join(f'{r:.3f}' for r in ratios)}; CPU time per image ratio {cpu_ratio:.3f}",
            f"SEG stage (build + store, after the model): {seg_stage:.1f} ms/image; estimate without machine noise "
            f"(png + SEG stage) / png = {(png * 1000 + seg_stage) / (png * 1000):.3f}"
            if args.mode == "embedded"
            else f"seg queue (build_segs: re-fetch, build, store, record; not in the ratio): "
            f"{statistics.median(seg_queue) * 1000:.1f} ms/image",
            *sr_line,
        ],
    ).print()


def image_keys(database_url: str, run_id: int) -> list[str]:
    from sqlalchemy import select

    from pixelperfect.db.models import Image
    from pixelperfect.db.session import session_scope

    with session_scope(database_url) as session:
        return list(session.scalars(select(Image.key).where(Image.run_id == run_id).order_by(Image.id)))


if __name__ == "__main__":
    main()
