"""P10 review: ``pixelperfect review RUN --below consistency_iou=0.8 --below score=0.5 --out CSV`` on a run of
100,000 images — wall time of the list (SQL only: one pass over the run's segments, no pixel reads).

The run (four segments per image) is synthesized in PostgreSQL from the golden fixture's real sam_tiny run, as for
P13/P14; its source is a directory, so the review writes the CSV only (a DICOM run adds one KOS per study, whose
headers are read per selected image: not measured here). Three runs, the median counts. No goal in the issue
beyond reporting it.

Run: ``python bench/p10_review.py [--images 100000]``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from common import Measure, load_average, postgres_db


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000)
    args = parser.parse_args()
    from pixelperfect.config import Settings
    from pixelperfect.review import review_run
    from tests.evaluation.golden.load import load_golden
    from tests.evaluation.golden.synth import clone_run

    out = Path(tempfile.mkdtemp(prefix="pp-p10r-")) / "review.csv"
    with postgres_db() as url:
        load_golden(url)
        clone_run(url, source="g-sam", name="synth", images=args.images)
        settings = Settings(database_url=url)
        runs = []
        for _ in range(3):
            t0 = time.perf_counter()
            stats = review_run("synth", settings, below={"consistency_iou": 0.8, "score": 0.5}, out=str(out))
            runs.append(time.perf_counter() - t0)
        lines = sum(1 for _ in out.open()) - 1
        detail = [
            f"{stats.images:,} of {args.images:,} images, {stats.segments:,} segments below (CSV {lines:,} rows, "
            f"{out.stat().st_size / 1e6:.1f} MB); runs {', '.join(f'{s:.2f}' for s in runs)} s; "
            f"load average {load_average():.2f}"
        ]
        Measure("P10", f"review of {args.images:,} images (SQL only, CSV)", statistics.median(runs), "s",
                details=detail).print()  # fmt: skip


if __name__ == "__main__":
    main()
