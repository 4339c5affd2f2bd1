"""``pixelperfect export RUN --format coco|csv``: a run's masks for training pipelines, streamed.

COCO JSON: ``images`` (id, file_name = image key, width, height), one category (``opacity``, id 1: the prompted
finding; a concept run: one per phrase, each instance in its phrase's), ``annotations`` with ``segmentation`` as
compressed RLE (``pycocotools.mask``, the mask at the image's resolution), ``bbox`` XYWH of the mask in pixels,
``area`` (pixels), ``score`` (SAM's predicted IoU) and PixelPerfect's ``stability``, ``consistency_std``,
``consistency_iou``, ``variant``, ``prompt_index`` as extra fields. CSV: one row per segment with the same
scores, the prompt (XYXY; a concept instance's ``{"concept", "box"}``), the mask and SEG URLs, no mask pixels.

Memory does not grow with the run: rows are read from SQL in pages of :data:`PAGE` and masks in windows of
:data:`WINDOW` (decoded, RLE-encoded and written before the next window is read). No PHI is exported: image keys,
sizes and scores only.
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from sqlalchemy import select

from pixelperfect.config import Settings
from pixelperfect.db import repo
from pixelperfect.db.models import Image, ImageStatus, Segment, SegObject
from pixelperfect.db.session import session_scope
from pixelperfect.storage import ObjectStore, open_store, parse_url, split_object_url

FORMATS = ("coco", "csv")
PAGE = 1000  # SQL rows per fetch
WINDOW = 64  # masks read and encoded at once (threads: READERS)
READERS = 8
CSV_COLUMNS = (
    "image_key", "width", "height", "variant", "prompt_index", "prompt_kind", "prompt", "area", "score",
    "stability", "consistency_std", "consistency_iou", "dice", "iou", "mask_url", "seg_url",
)  # fmt: skip


@dataclass
class ExportStats:
    images: int = 0
    annotations: int = 0
    out: str = ""


def export_run(name: str, settings: Settings, *, fmt: str, out: str, variant: str | None = None) -> ExportStats:
    """Write run ``name`` as ``fmt`` (``coco`` | ``csv``) to ``out`` (a path, ``file://`` or ``s3://`` URL).
    Raises ``LookupError`` for an unknown run and ``ValueError`` naming a bad format or variant."""
    if fmt not in FORMATS:
        raise ValueError(f"--format {fmt!r}: choose coco or csv")
    with session_scope(settings.database_url) as session:
        row = repo.get_run(session, name=name)
        if row is None:
            raise LookupError(f"no run named {name!r} in the database")
        run_id, store_url = row.id, row.store_url
        names = [v["name"] for v in row.variants]
        concepts = list(((row.settings or {}).get("concept") or {}).get("concepts") or [])  # concept runs (SAM 3)
    if variant is not None and variant not in names:
        raise ValueError(f"--variant {variant!r}: run {name!r} has {', '.join(names)}")
    store = open_store(store_url, endpoint_url=settings.s3_endpoint_url)
    stats = ExportStats(out=out)
    with _Output(out, settings) as fh:
        if fmt == "coco":
            _write_coco(fh, settings, run_id, name, variant, store, stats, concepts)
        else:
            _write_csv(fh, settings, run_id, variant, stats)
    return stats


class _Output:
    """A local file written in place, or a temporary file uploaded to ``s3://`` when closed without error."""

    def __init__(self, out: str, settings: Settings) -> None:
        self.out, self.settings = out, settings
        scheme, _, path = parse_url(out)
        self.remote = scheme != "file"
        self.path = tempfile.mkstemp(suffix=".export")[1] if self.remote else str(Path(path).expanduser())

    def __enter__(self) -> IO[str]:
        self.fh = open(self.path, "w", encoding="utf-8", newline="")
        return self.fh

    def __exit__(self, kind: Any, *_: Any) -> None:
        self.fh.close()
        try:
            if self.remote and kind is None:
                root, key = split_object_url(self.out)
                store = open_store(root, endpoint_url=self.settings.s3_endpoint_url)
                client = getattr(store, "client", None)
                if client is not None and hasattr(store, "bucket"):  # S3: multipart upload from the file
                    client.upload_file(self.path, store.bucket, store._key(key))  # type: ignore[attr-defined]
                else:
                    store.put(key, Path(self.path).read_bytes())
        finally:
            if self.remote:
                os.unlink(self.path)


def _segments(settings: Settings, run_id: int, variant: str | None) -> Iterator[tuple[Any, ...]]:
    query = (
        select(Image.id, Image.key, Image.width, Image.height, Segment, SegObject.object_key)
        .join(Segment, Segment.image_id == Image.id)
        .outerjoin(SegObject, (SegObject.image_id == Image.id) & (SegObject.variant == Segment.variant))
        .where(Image.run_id == run_id, Image.status == ImageStatus.done.value)
        .order_by(Image.id, Segment.variant, Segment.prompt_index)
    )
    if variant is not None:
        query = query.where(Segment.variant == variant)
    with session_scope(settings.database_url) as session:
        for row in session.execute(query.execution_options(yield_per=PAGE)):
            yield tuple(row)
            session.expunge(row[4])


def _images(settings: Settings, run_id: int) -> Iterator[tuple[int, str, int | None, int | None]]:
    query = (
        select(Image.id, Image.key, Image.width, Image.height)
        .where(Image.run_id == run_id, Image.status == ImageStatus.done.value)
        .order_by(Image.id)
    )
    with session_scope(settings.database_url) as session:
        for row in session.execute(query.execution_options(yield_per=PAGE)):
            yield row[0], row[1], row[2], row[3]


def _windows(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    window: list[Any] = []
    for item in items:
        window.append(item)
        if len(window) == size:
            yield window
            window = []
    if window:
        yield window


def _rle(store: ObjectStore) -> Callable[[str], dict[str, Any]]:
    import cv2
    import numpy as np
    from pycocotools import mask as mask_util

    root = store.url.rstrip("/") + "/"

    def encode(url: str) -> dict[str, Any]:
        data = store.get(url[len(root) :]) if url.startswith(root) else _read(url)
        mask = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
        if mask is None:
            raise ValueError(f"mask {url} does not decode")
        rle = mask_util.encode(np.asfortranarray((mask > 0).astype(np.uint8)))
        bbox = [float(v) for v in mask_util.toBbox(rle)]
        return {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii"), "bbox": bbox,
                "area": int(mask_util.area(rle))}  # fmt: skip

    return encode


def _category(prompt: Any, names: list[str]) -> int:
    """The COCO category of a segment: its concept's (1-based, in the run's order), else 1 (``opacity``)."""
    if isinstance(prompt, dict) and prompt.get("concept") in names:
        return names.index(prompt["concept"]) + 1
    return 1


def _read(url: str) -> bytes:
    from pixelperfect.storage import read_url

    return read_url(url)


def _write_coco(
    fh: IO[str],
    settings: Settings,
    run_id: int,
    name: str,
    variant: str | None,
    store: ObjectStore,
    stats: ExportStats,
    concepts: list[str] | None = None,
) -> None:
    info = {"description": f"PixelPerfect run {name}", "variant": variant}
    names = concepts or ["opacity"]  # a concept run: one category per phrase, in the run's order
    categories = [{"id": i + 1, "name": n, "supercategory": "finding"} for i, n in enumerate(names)]
    fh.write('{"info": ' + json.dumps(info) + ', "licenses": [], "categories": ' + json.dumps(categories)
             + ',\n"images": [')  # fmt: skip
    for i, (image_id, key, width, height) in enumerate(_images(settings, run_id)):
        entry = {"id": image_id, "file_name": key, "width": width, "height": height}
        fh.write((",\n" if i else "\n") + json.dumps(entry))
        stats.images += 1
    fh.write('],\n"annotations": [')
    encode = _rle(store)
    first = True
    with ThreadPoolExecutor(READERS) as pool:
        for window in _windows(_segments(settings, run_id, variant), WINDOW):
            encoded = pool.map(encode, [seg.mask_key or "" for _, _, _, _, seg, _ in window])
            for (image_id, _key, _w, _h, seg, seg_url), rle in zip(window, encoded, strict=True):
                entry = {
                    "id": seg.id,
                    "image_id": image_id,
                    "category_id": _category(seg.prompt, names),
                    "segmentation": {"size": rle["size"], "counts": rle["counts"]},
                    "bbox": rle["bbox"],
                    "area": rle["area"],
                    "iscrowd": 0,
                    "score": seg.score,
                    "stability": seg.stability,
                    "consistency_std": seg.consistency_std,
                    "consistency_iou": seg.consistency_iou,
                    "variant": seg.variant,
                    "prompt_index": seg.prompt_index,
                    "seg_url": seg_url,
                }
                fh.write(("\n" if first else ",\n") + json.dumps(entry))
                first = False
                stats.annotations += 1
    fh.write("]}\n")


def _write_csv(fh: IO[str], settings: Settings, run_id: int, variant: str | None, stats: ExportStats) -> None:
    writer = csv.writer(fh)
    writer.writerow(CSV_COLUMNS)
    last = None
    for image_id, key, width, height, seg, seg_url in _segments(settings, run_id, variant):
        stats.images += image_id != last
        last = image_id
        writer.writerow([
            key, width, height, seg.variant, seg.prompt_index, seg.prompt_kind, json.dumps(seg.prompt), seg.area,
            seg.score, seg.stability, seg.consistency_std, seg.consistency_iou, seg.dice, seg.iou, seg.mask_key,
            seg_url or "",
        ])  # fmt: skip
        stats.annotations += 1
