"""Regenerate the golden report fixture: ``python -m tests.evaluation.golden.make_golden``.

Runs four small embedded runs on 24 phantoms (sam_tiny with box prompts, GrabCut, sam_tiny with automatic
prompts, and a run whose every image fails), dumps their rows to ``runs.json`` and writes the reports the code of
the day produced for them into ``reports/``. ``test_golden.py`` loads ``runs.json`` into a fresh database and
checks that today's report gives the same numbers. Made once, before the report moved its aggregates into SQL
(issue 13); rerunning it re-baselines the fixture.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select

from pixelperfect.db.models import Annotation, Image, Run, Segment
from pixelperfect.db.session import session_scope

HERE = Path(__file__).resolve().parent
TABLES = (Run, Image, Segment, Annotation)
#: report name -> the runs it covers, in order
REPORTS = {
    "box_two_runs": ["g-sam", "g-grab"],
    "auto": ["g-auto"],
    "box_and_auto": ["g-sam", "g-auto"],
    "only_failures": ["g-fail"],
}


def _plain(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def dump(url: str) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    with session_scope(url) as session:
        for model in TABLES:
            table = model.__table__
            rows = session.execute(select(table).order_by(table.c.id))
            out[table.name] = [{k: _plain(v) for k, v in row._mapping.items()} for row in rows]
    return out


def main() -> None:
    import torch

    from pixelperfect.embedded import SubmitRequest, submit
    from pixelperfect.evaluation.build import build_report
    from pixelperfect.pipeline.model.weights import TinyConfig, build_tiny_sam, tiny_checkpoint_bytes
    from pixelperfect.pipeline.options import AutoSettings, ProcessSettings
    from pixelperfect.synthetic.phantoms import write_phantoms
    from tests.conftest import embedded_settings

    work = Path(tempfile.mkdtemp(prefix="golden-"))
    torch.manual_seed(7)
    cfg = TinyConfig()
    ckpt = work / "sam_tiny.pth"
    ckpt.write_bytes(tiny_checkpoint_bytes(build_tiny_sam(cfg), cfg))
    phantoms = work / "phantoms"
    write_phantoms(phantoms, 24, seed=3, size=256)
    broken = work / "broken"
    broken.mkdir()
    for i in range(3):
        (broken / f"phantom-{i:05d}.png").write_bytes(b"not a png")  # same names: annotations and masks match
    settings = embedded_settings(work)
    common = {"annotations": str(phantoms / "labels.csv"), "gt_masks": str(phantoms / "masks"), "batch_size": 12}
    loose = ProcessSettings(auto=AutoSettings(points_per_side=8, min_score=0.0, min_stability=0.0, lung_only=False))
    for run, model, prompts, source, process in (
        ("g-sam", "sam_tiny", "boxes", phantoms / "images", ProcessSettings()),
        ("g-grab", "grabcut", "boxes", phantoms / "images", ProcessSettings()),
        ("g-auto", "sam_tiny", "auto", phantoms / "images", loose),  # the untrained tiny SAM needs loose filters
        ("g-fail", "sam_tiny", "boxes", broken, ProcessSettings()),
    ):
        submit(
            SubmitRequest(
                source=str(source),
                run=run,
                model=model,
                checkpoint=str(ckpt) if model == "sam_tiny" else None,
                variants=["raw", "clahe"],
                prompts=prompts,
                process=process,
                **common,  # type: ignore[arg-type]
            ),
            settings,
        )
    (HERE / "runs.json").write_text(json.dumps(dump(settings.database_url), separators=(",", ":")))
    reports = HERE / "reports"
    shutil.rmtree(reports, ignore_errors=True)
    for name, runs in REPORTS.items():
        build_report(runs, reports / name, settings=settings, fmt="json")
        build_report(runs, reports / name, settings=settings, fmt="csv")
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
