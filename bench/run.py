"""``make bench``: the CPU benchmarks of issue 8, side by side in one run (about 5 minutes on 2 cores).

Each measure prints one line, ``P<n> <what> ratio=<x>`` or ``P<n> <what> value=<x> <unit>`` (with its goal and
``ok=yes|no``), followed by ``#`` detail lines. Every benchmark runs in its own process, so thread settings and
memory of one cannot colour another. The real services must be up (PostgreSQL, Redis; moto runs in-process).

* P1 ``p1_pipeline.py``  end-to-end ÷ model-only time per image; non-model CPU time per 1024² image
* P2 ``p2_scaling.py``   two workers ÷ one worker, images/s (S3 + PostgreSQL + Redis)
* P3 ``bench_consistency.py`` consistency K = 4 ÷ K = 0 (issue 4's benchmark, when present)
* P3c ``p3c_concept.py`` SAM 3 concept prompts: 4 ÷ 1 concepts, and K = 4 ÷ K = 0 concept consistency
* P5 ``p5_producer.py``  producer keys/s for a million keys; S3 listing rate
* P7 ``p7_rss.py``       worker RSS drift over 1,000 images
* P8 ``p8_cpu_bf16.py``  ViT-B encoder on the CPU, bf16 ÷ fp32 time per image, and bf16-vs-fp32 mask IoU
* P11 ``p11_decode.py``  DICOM decode per transfer syntax ÷ the fastest single-thread decoder + numpy VOI
* P12 ``p12_reduced.py`` decode at the model's input size ÷ full decode; reduced-vs-full mask Dice
* P15 ``p15_control.py`` cancel of 100,000 queued images (s); delete rate of a run's objects (objects/s, S3)
* P9 ``p9_dicomweb.py``  listing keys/s and fetch ms/image against the local Orthanc: DICOMweb (QIDO-RS, WADO-RS)
  beside DIMSE (C-FIND, C-GET), and S3 (moto)
* P10 ``p10_seg.py``     GPU worker time per image, --output png,dicom-seg ÷ png (SEGs on the ``seg`` queue)
* P10 ``p10_export.py``  COCO export of 2,000 images: images/s, peak RSS against a quarter of the run
* P13 ``p13_report.py``  ``report`` time and peak RSS at 10k, 100k, 1M synthesized images (JSON and HTML)
* P14 ``p14_status.py``  ``status`` time and peak RSS at 1M synthesized images
* P6 (GPU) is ``bench/gpu.sh``, not part of this run.

Run: ``python bench/run.py [--only P1,P5] [--quick] [--strict]`` (``--strict``: exit 1 when a goal is missed).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: (measure, script, full arguments, --quick arguments)
BENCHES = [
    ("P1", "p1_pipeline.py", ["--images", "16", "--repeats", "2"], ["--images", "4", "--repeats", "1"]),
    ("P2", "p2_scaling.py", ["--images", "32"], ["--images", "8"]),
    ("P3", "bench_consistency.py", [], []),
    ("P3c", "p3c_concept.py", ["--images", "3"], ["--images", "1", "--size", "512"]),
    ("P5", "p5_producer.py", ["--keys", "1000000"], ["--keys", "50000"]),
    ("P7", "p7_rss.py", ["--images", "1000"], ["--images", "200"]),
    ("P8", "p8_cpu_bf16.py", [], ["--images", "1", "--repeats", "1"]),
    ("P11", "p11_decode.py", ["--images", "2", "--repeats", "10"], ["--images", "1", "--repeats", "2"]),
    ("P12", "p12_reduced.py", ["--images", "2", "--repeats", "5"], ["--images", "1", "--repeats", "1", "--no-dice"]),
    ("P15", "p15_control.py", ["--images", "100000", "--objects", "5000"], ["--images", "10000", "--objects", "1000"]),
    ("P9", "p9_dicomweb.py", ["--images", "200"], ["--images", "20"]),
    (
        "P10",
        "p10_seg.py",
        ["--images", "16", "--repeats", "6", "--mode", "worker"],
        ["--images", "4", "--repeats", "1", "--mode", "worker"],
    ),
    ("P10", "p10_export.py", ["--images", "2000"], ["--images", "200"]),
    ("P13", "p13_report.py", ["--sizes", "10000,100000,1000000"], ["--sizes", "1000,10000"]),
    ("P14", "p14_status.py", ["--images", "1000000"], ["--images", "20000"]),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated measures, e.g. P1,P5")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test, not a measurement")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a goal is missed")
    args = parser.parse_args()
    only = {m.strip().upper() for m in args.only.split(",") if m.strip()}
    started = time.perf_counter()
    print(f"# {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.node()}, {os.cpu_count()} CPUs, "
          f"{platform.processor() or platform.machine()}, Python {platform.python_version()}, "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)  # fmt: skip
    missed, failed = [], []
    for measure, script, full, quick in BENCHES:
        if only and measure not in only:
            continue
        path = HERE / script
        if not path.exists():
            print(f"# {measure}: {script} not present, skipped", flush=True)
            continue
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, str(path), *(quick if args.quick else full)], cwd=HERE.parent,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
        out, err = proc.communicate()
        lines = [line for line in out.splitlines() if line.startswith(("P", "#"))]
        for line in lines:
            print(line, flush=True)
            if line.startswith("P") and "ok=no" in line:
                missed.append(line.split(" ", 1)[0])
        if proc.returncode not in (0, 1) or not any(line.startswith("P") for line in lines):
            failed.append(measure)
            print(f"# {measure}: {script} exited {proc.returncode}:\n" + _indent(err[-3000:]), flush=True)
        print(f"#   ({measure} took {time.perf_counter() - t0:.0f} s)", flush=True)
    print(f"# total {time.perf_counter() - started:.0f} s; goals missed: {', '.join(missed) or 'none'}"
          + (f"; failed: {', '.join(failed)}" if failed else ""), flush=True)  # fmt: skip
    return 1 if failed or (args.strict and missed) else 0


def _indent(text: str) -> str:
    return "\n".join(f"#   {line}" for line in text.splitlines())


if __name__ == "__main__":
    sys.exit(main())
