"""P6: the GPU benchmark — ViT-B (random seeded weights, no checkpoint needed for speed) on one CUDA device.

* encoder images/s and peak GPU memory, fp32 (TF32 matmuls) and bf16 autocast, encoder chunks of 1, 8 and 32
  images of 1024², inputs prepared as the worker prepares them (uint8, pinned host memory);
* optionally (``--compile``) the cold start and the speed of ``torch.compile``'d encoder, bf16, chunk 32;
* end-to-end images/s: phantom PNGs (1024², two boxes each, K = 4) pre-staged on local disk, the embedded runner
  (``run_batch``: read, decode, preprocess, model, scores, mask PNGs to a file:// store, SQLite), one process and
  two processes sharing the GPU (``pixelperfect worker --concurrency 2`` on one card).

Prints ``P6 <what> value=<x> <unit>`` lines. Budget: under 8 minutes on an H100 (``--budget`` seconds; optional
parts are skipped when the budget is short). Run through ``bench/gpu.sh``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import Measure, stage_ms, two_boxes

STARTED = time.perf_counter()
E2E_GOAL = ">=250"
#: ``--smoke`` checks this script's plumbing on a CPU: sam_tiny, a few images (numbers meaningless).
SMOKE = os.environ.get("PP_GPU_BENCH_SMOKE") == "1"
DEVICE, MODEL = ("cpu", "sam_tiny") if SMOKE else ("cuda", "sam_vit_b")


def left(budget: float) -> float:
    return budget - (time.perf_counter() - STARTED)


def encoder_speed(precision: str, chunk: int, compile_encoder: bool = False) -> list[Measure]:
    import numpy as np
    import torch

    from pixelperfect.pipeline.model.sam import SamSegmenter
    from pixelperfect.pipeline.model.weights import load_sam

    cuda = DEVICE == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    t_build = time.perf_counter()
    seg = SamSegmenter(load_sam(MODEL, None), torch.device(DEVICE), name=MODEL, encoder_batch=chunk,
                       precision=precision, compile_encoder=compile_encoder)  # fmt: skip
    rng = np.random.default_rng(0)
    inputs = [seg.prepare((rng.random((1024, 1024)) * 255).astype(np.uint8)) for _ in range(chunk)]
    sync()
    t0 = time.perf_counter()
    seg.encode(inputs)  # warm-up: cuDNN/cuBLAS choices, and the compilation when compiled
    sync()
    cold = time.perf_counter() - t0
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    repeats = 1 if SMOKE else max(3, 64 // chunk)
    t0 = time.perf_counter()
    for _ in range(repeats):
        seg.encode(inputs)
    sync()
    rate = repeats * chunk / (time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0
    tag = f"{precision}{' compiled' if compile_encoder else ''} chunk {chunk}"
    out = [
        Measure("P6", f"encoder images/s ViT-B 1024² {tag}", rate, "images/s"),
        Measure("P6", f"peak GPU memory encoder ViT-B {tag}", peak, "GiB"),
    ]
    if compile_encoder:
        out.append(Measure("P6", f"torch.compile cold start ViT-B {tag}", cold, "s",
                           details=[f"model build {t0 - t_build - cold:.1f} s before it"]))  # fmt: skip
    del seg
    if cuda:
        torch.cuda.empty_cache()
    return out


def stage(root: Path, n: int) -> tuple[Path, Path]:
    """``n`` 1024² phantom PNGs on local disk (32 distinct, copied under new keys) and their two-box labels."""
    from pixelperfect.synthetic.phantoms import write_phantoms

    write_phantoms(root / "src", 32, seed=5, size=1024)
    images = root / "images"
    images.mkdir(parents=True)
    sources = sorted((root / "src" / "images").iterdir())
    lines = ["patientId,x,y,width,height,Target"]
    for i in range(n):
        shutil.copyfile(sources[i % len(sources)], images / f"img-{i:05d}.png")
        lines += [f"img-{i:05d},{x1},{y1},{x2 - x1},{y2 - y1},1" for x1, y1, x2, y2 in two_boxes(i, 1024)]
    labels = root / "labels.csv"
    labels.write_text("\n".join(lines) + "\n")
    return images, labels


def e2e_child(images: str, labels: str, workdir: str, precision: str, chunk: int, batch: int, run: str) -> None:
    """One embedded submission (its own SQLite and store); prints its images/s as JSON."""
    from pixelperfect.config import Settings, use_settings
    from pixelperfect.embedded import SubmitRequest, submit

    settings = Settings(database_url=f"sqlite:///{workdir}/pp.db", store_url=f"file://{workdir}/store",
                        model=MODEL, device=DEVICE, precision=precision, encoder_batch=chunk,
                        batch_size=batch)  # type: ignore[arg-type]  # fmt: skip
    use_settings(settings)
    req = SubmitRequest(source=images, run="warm", variants=["raw"], model=MODEL, checkpoint="random",
                        annotations=labels, manifest=None)  # fmt: skip
    warm_dir = Path(workdir) / "warm"
    warm_dir.mkdir(parents=True, exist_ok=True)
    for p in sorted(Path(images).iterdir())[:chunk]:
        shutil.copyfile(p, warm_dir / p.name)
    submit(SubmitRequest(**{**req.__dict__, "source": str(warm_dir)}), settings)  # model load, CUDA warm-up
    t0 = time.perf_counter()
    result = submit(SubmitRequest(**{**req.__dict__, "run": run}), settings)
    seconds = time.perf_counter() - t0
    print(json.dumps({"images": result.images, "seconds": seconds, "stages": stage_ms(settings.database_url, run)}))


def e2e(images: Path, labels: Path, root: Path, precision: str, chunk: int, batch: int, procs: int) -> Measure:
    """``procs`` processes, each submitting its share of the images (their own SQLite), at the same time."""
    here = Path(__file__).resolve().parent
    shares = sorted(images.iterdir())
    children = []
    for p in range(procs):
        share = root / f"share-{precision}-{chunk}-{procs}-{p}"
        (share / "images").mkdir(parents=True)
        for path in shares[p::procs]:
            os.link(path, share / "images" / path.name)
        code = (f"import sys; sys.path.insert(0, {str(here)!r}); import gpu_bench as g; "
                f"g.e2e_child({str(share / 'images')!r}, {str(labels)!r}, {str(share)!r}, {precision!r}, {chunk}, "
                f"{batch}, 'e2e')")  # fmt: skip
        children.append(subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True))
    t0 = time.perf_counter()
    results = []
    for child in children:
        out, _ = child.communicate(timeout=600)
        if child.returncode != 0:
            raise RuntimeError(f"end-to-end child exited {child.returncode}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    # the children warm up first, each on its own clock: the rate is the sum of their own rates
    rate = sum(r["images"] / r["seconds"] for r in results)
    wall = time.perf_counter() - t0
    stages = results[0]["stages"]
    return Measure(
        "P6", f"end-to-end images/s ViT-B {precision} chunk {chunk} batch {batch}, {procs} process(es)", rate,
        "images/s", goal=E2E_GOAL if precision == "bf16" else "",
        details=[f"{sum(r['images'] for r in results)} images from local disk, masks to a file:// store, SQLite; "
                 f"{wall:.1f} s wall including the warm-up",
                 "stage ms/image (process 1): " + ", ".join(f"{k} {v:.1f}" for k, v in stages.items())],
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=420.0, help="seconds; optional parts skipped beyond it")
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile (cold start ~1 min)")
    parser.add_argument("--smoke", action="store_true", help="check the plumbing on a CPU (meaningless numbers)")
    args = parser.parse_args()
    if args.smoke and not SMOKE:  # the children must see it too
        os.environ["PP_GPU_BENCH_SMOKE"] = "1"
        os.execv(sys.executable, [sys.executable, *sys.argv])
    import torch

    if SMOKE:
        print("# smoke test on CPU with sam_tiny: the numbers mean nothing")
        for precision in ("fp32", "bf16"):
            for m in encoder_speed(precision, 2):
                m.print()
        with tempfile.TemporaryDirectory(prefix="pp-gpu-") as tmp:
            images, labels = stage(Path(tmp), 8)
            e2e(images, labels, Path(tmp), "bf16", 2, 4, 1).print()
            e2e(images, labels, Path(tmp), "fp32", 2, 4, 2).print()
        return
    if not torch.cuda.is_available():
        print("# no CUDA device: P6 not measured")
        sys.exit(2)
    props = torch.cuda.get_device_properties(0)
    print(f"# {props.name}, {props.total_memory / 2**30:.0f} GiB, torch {torch.__version__}, "
          f"CUDA {torch.version.cuda}, {os.cpu_count()} CPUs", flush=True)  # fmt: skip
    for precision in ("bf16", "fp32"):
        for chunk in (1, 8, 32):
            for m in encoder_speed(precision, chunk):
                m.print()
    with tempfile.TemporaryDirectory(prefix="pp-gpu-") as tmp:
        root = Path(tmp)
        images, labels = stage(root, args.images)
        runs = [("bf16", 32, 64, 1), ("bf16", 32, 64, 2), ("bf16", 8, 32, 1), ("fp32", 32, 64, 1)]
        for precision, chunk, batch, procs in runs:
            if left(args.budget) < 60:
                print(f"# budget spent: skipped end-to-end {precision} chunk {chunk}, {procs} process(es)")
                continue
            e2e(images, labels, root, precision, chunk, batch, procs).print()
    if args.compile and left(args.budget) > 150:
        for m in encoder_speed("bf16", 32, compile_encoder=True):
            m.print()
    elif args.compile:
        print("# budget spent: torch.compile not measured")
    print(f"# P6 took {time.perf_counter() - STARTED:.0f} s", flush=True)


if __name__ == "__main__":
    main()
