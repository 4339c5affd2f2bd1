"""The golden segment rows: box, point and auto prompt runs on phantoms, embedded (sam_tiny, CPU, SQLite).

``collect_rows`` runs the three runs and returns every segment row (all columns but ids, timestamps and the
temporary store root) with a SHA-256 of each mask's pixels; ``compare`` checks two such lists, floats to 1e-6.
``python -m tests.pipeline.golden OUT.json`` writes the fixture file ``golden_rows.json`` next to this module.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np

GOLDEN = Path(__file__).with_name("golden_rows.json")
N_IMAGES = 4
_SKIP = {"id", "run_id", "image_id", "mask_key"}


def collect_rows(tmp: Path, phantom_dir: Path, checkpoint: Path) -> list[dict[str, Any]]:
    """Run box (raw + clahe), point and auto (raw) prompts over the first ``N_IMAGES`` phantoms; return the rows
    ordered by run, image key, variant and prompt index."""
    from sqlalchemy import select

    from pixelperfect.db.models import Image, Run, Segment
    from pixelperfect.db.session import session_scope
    from pixelperfect.embedded import SubmitRequest, submit
    from pixelperfect.pipeline.options import AutoSettings, ProcessSettings
    from pixelperfect.storage import open_store
    from tests.conftest import embedded_settings

    settings = embedded_settings(tmp)
    images = tmp / "images"
    images.mkdir()
    for path in sorted((phantom_dir / "images").iterdir())[:N_IMAGES]:
        shutil.copy(path, images / path.name)
    points_csv = tmp / "points.csv"
    points_csv.write_text("key,x,y,label\nphantom-00000,100,120,1\nphantom-00000,30,30,0\nphantom-00001,60,90,1\n")
    common: dict[str, Any] = dict(source=str(images), model="sam_tiny", checkpoint=str(checkpoint), batch_size=3)
    auto = ProcessSettings(auto=AutoSettings(points_per_side=4, min_score=0.0, min_stability=0.0, lung_only=False))
    requests = [
        SubmitRequest(**common, run="box", variants=["raw", "clahe"], annotations=str(phantom_dir / "labels.csv"),
                      gt_masks=str(phantom_dir / "masks")),
        SubmitRequest(**common, run="point", variants=["raw"], prompts="points", points=str(points_csv),
                      gt_masks=str(phantom_dir / "masks")),
        SubmitRequest(**common, run="auto", variants=["raw"], prompts="auto", process=auto,
                      annotations=str(phantom_dir / "labels.csv"), gt_masks=str(phantom_dir / "masks")),
    ]  # fmt: skip
    for req in requests:
        submit(req, settings)
    store = open_store(settings.store_url)
    root = settings.store_url.rstrip("/") + "/"
    out: list[dict[str, Any]] = []
    with session_scope(settings.database_url) as session:
        query = (
            select(Run.name, Image.key, Segment)
            .join(Image, Segment.image_id == Image.id)
            .join(Run, Segment.run_id == Run.id)
            .order_by(Run.name, Image.key, Segment.variant, Segment.prompt_index)
        )
        for run_name, key, seg in session.execute(query):
            row: dict[str, Any] = {"run": run_name, "image": key}
            for column in Segment.__table__.columns:
                if column.name not in _SKIP:
                    row[column.name] = getattr(seg, column.name)
            assert seg.mask_key is not None and seg.mask_key.startswith(root), seg.mask_key
            relative = seg.mask_key[len(root) :]
            row["mask_key"] = relative
            mask = cv2.imdecode(np.frombuffer(store.get(relative), np.uint8), cv2.IMREAD_GRAYSCALE) > 0
            row["mask_sha256"] = hashlib.sha256(np.packbits(mask).tobytes() + repr(mask.shape).encode()).hexdigest()
            out.append(row)
    return out


def compare(got: Any, want: Any, where: str = "rows", tol: float = 1e-6) -> list[str]:
    """The differences between two JSON-like values (floats compared to ``tol``), as readable lines."""
    if isinstance(want, float) or isinstance(got, float):
        numbers = isinstance(got, (int, float)) and isinstance(want, (int, float))
        if numbers and math.isclose(float(got), float(want), rel_tol=tol, abs_tol=tol):
            return []
        return [f"{where}: {got!r} != {want!r}"]
    if isinstance(want, dict) and isinstance(got, dict):
        diffs = [f"{where}: keys {sorted(set(got) ^ set(want))} differ"] if set(got) != set(want) else []
        for k in sorted(set(got) & set(want)):
            diffs.extend(compare(got[k], want[k], f"{where}.{k}", tol))
        return diffs
    if isinstance(want, list) and isinstance(got, list):
        if len(got) != len(want):
            return [f"{where}: length {len(got)} != {len(want)}"]
        return [d for i, (g, w) in enumerate(zip(got, want, strict=True)) for d in compare(g, w, f"{where}[{i}]", tol)]
    return [] if got == want else [f"{where}: {got!r} != {want!r}"]


def main(argv: list[str]) -> None:
    """Write the golden file: ``python -m tests.pipeline.golden [OUT]`` (phantoms and checkpoint as the fixtures
    ``phantom_dir`` and ``tiny_checkpoint`` make them)."""
    import torch

    from pixelperfect.pipeline.model.weights import TinyConfig, build_tiny_sam, tiny_checkpoint_bytes
    from pixelperfect.synthetic.phantoms import write_phantoms

    out = Path(argv[0]) if argv else GOLDEN
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        write_phantoms(tmp / "phantoms", 12, seed=3, size=256)
        torch.manual_seed(7)
        cfg = TinyConfig()
        ckpt = tmp / "sam_tiny.pth"
        ckpt.write_bytes(tiny_checkpoint_bytes(build_tiny_sam(cfg), cfg))
        (tmp / "run").mkdir()
        rows = collect_rows(tmp / "run", tmp / "phantoms", ckpt)
    out.write_text(json.dumps(rows, indent=None, separators=(",", ":")) + "\n")
    print(f"{len(rows)} rows -> {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
