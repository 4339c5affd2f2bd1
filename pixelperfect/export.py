"""``pixelperfect export RUN --format coco|csv``: a run's masks for training pipelines, streamed.

COCO JSON: ``images`` (id, file_name = image key, width, height), one category (``opacity``, id 1: the prompted
finding; a concept run: one per phrase, each instance in its phrase's), ``annotations`` with ``segmentation`` as
compressed RLE (``pycocotools.mask``, the mask at the image's resolution), ``bbox`` XYWH of the mask in pixels,
``area`` (pixels), ``score`` (SAM's predicted IoU) and PixelPerfect's ``stability``, ``consistency_std``,
``consistency_iou``, ``variant``, ``prompt_index`` as extra fields. CSV: one row per segment with the same
scores, the prompt (XYXY; a concept instance's ``{"concept", "box"}``), the mask and SEG URLs, no mask pixels.

Memory does not grow with the run: rows are read from SQL in pages of :data:`PAGE` and masks in windows of
:data:`WINDOW` (decoded, RLE-encoded and written before the next window is read). No patient attribute is exported:
image keys, sizes and scores only — but a DICOM archive's keys *are* Study/Series/SOP Instance UIDs, which DICOM's
de-identification profile (PS3.15 Annex E, basic profile: UIDs "U", replaced consistently) replaces.

Provenance (IHE AIR's producer, as on the SEGs and SRs): COCO's ``info`` and the CSV's header lines (``# name:
value`` before the column row) name the manufacturer, model, code version, checkpoint sha256, device UID, run and
research use, and say whether the export contains UIDs.

``--deidentify``: every key is replaced by a stable pseudonym per run, an HMAC-SHA256 under the run's secret salt
(``runs.deid_salt``, drawn at the run's first de-identified export): a UID (each part of an archive key) becomes
``2.25.<decimal of 128 bits>`` (a UID of the UUID form), a file key ``<32 hex>`` with its suffix; mask and SEG URLs,
which embed the key, are left out. The mapping pseudonym -> original is written to a separate CSV (``--mapping``,
default ``<out>.mapping.csv``) for the user to keep apart from the export.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import json
import os
import secrets
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
    mapping: str | None = None  # the pseudonym -> original file of a de-identified export


class Pseudonyms:
    """Stable pseudonyms of one run's keys: HMAC-SHA256 under the run's salt; remembers what it replaced."""

    def __init__(self, salt: str) -> None:
        self.key = bytes.fromhex(salt)
        self.seen: dict[str, tuple[str, str]] = {}  # pseudonym -> (kind, original)

    def _digest(self, value: str) -> bytes:
        return hmac.new(self.key, value.encode("utf-8"), hashlib.sha256).digest()

    def uid(self, value: str) -> str:
        pseudo = f"2.25.{int.from_bytes(self._digest('uid:' + value)[:16], 'big')}"
        self.seen.setdefault(pseudo, ("uid", value))
        return pseudo

    def key_of(self, key: str) -> str:
        """An archive key (three UIDs) part by part, any other key whole (its suffix kept)."""
        parts = key.split("/")
        if len(parts) == 3 and all(p and p.replace(".", "").isdigit() for p in parts):
            pseudo = "/".join(self.uid(p) for p in parts)
        else:
            suffix = os.path.splitext(key)[1] if "." in key.rsplit("/", 1)[-1] else ""
            pseudo = self._digest("key:" + key)[:16].hex() + suffix
        self.seen.setdefault(pseudo, ("key", key))
        return pseudo

    def write(self, path: str) -> None:
        with open(path, "w", encoding="utf-8", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["pseudonym", "kind", "original"])
            for pseudo, (kind, original) in sorted(self.seen.items()):
                writer.writerow([pseudo, kind, original])


def _salt(settings: Settings, run_id: int) -> str:
    """The run's de-identification salt, drawn (and kept) at its first de-identified export."""
    from pixelperfect.db.models import Run

    with session_scope(settings.database_url) as session:
        run = session.get(Run, run_id)
        if run is None:
            raise LookupError(f"run {run_id} vanished")
        if not run.deid_salt:
            run.deid_salt = secrets.token_hex(32)
        return str(run.deid_salt)


def provenance(row: Any) -> dict[str, Any]:
    """The producer of a run's results (IHE AIR's Contributing Equipment, as on its SEGs and SRs)."""
    from pydicom.uid import generate_uid

    device = generate_uid(entropy_srcs=["pixelperfect-device", row.model, row.checkpoint_sha256 or "none"])
    return {
        "manufacturer": "PixelPerfect",
        "model": row.model,
        "code_version": row.code_version,
        "checkpoint_sha256": row.checkpoint_sha256,
        "device_uid": str(device),
        "run": row.name,
        "research_use": bool((row.settings or {}).get("research_use", True)),
    }


def export_run(
    name: str,
    settings: Settings,
    *,
    fmt: str,
    out: str,
    variant: str | None = None,
    deidentify: bool = False,
    mapping: str | None = None,
) -> ExportStats:
    """Write run ``name`` as ``fmt`` (``coco`` | ``csv``) to ``out`` (a path, ``file://`` or ``s3://`` URL);
    ``deidentify``: keys replaced by pseudonyms, their mapping written to ``mapping`` (a local path; default
    ``<out>.mapping.csv`` for a local ``out``). Raises ``LookupError`` for an unknown run and ``ValueError`` naming a
    bad format, variant or mapping path."""
    if fmt not in FORMATS:
        raise ValueError(f"--format {fmt!r}: choose coco or csv")
    with session_scope(settings.database_url) as session:
        row = repo.get_run(session, name=name)
        if row is None:
            raise LookupError(f"no run named {name!r} in the database")
        run_id, store_url = row.id, row.store_url
        names = [v["name"] for v in row.variants]
        info = provenance(row)
        concepts = list(((row.settings or {}).get("concept") or {}).get("concepts") or [])  # concept runs (SAM 3)
    if variant is not None and variant not in names:
        raise ValueError(f"--variant {variant!r}: run {name!r} has {', '.join(names)}")
    pseudonyms = None
    if deidentify:
        scheme, _, path = parse_url(out)
        if mapping is None and scheme != "file":
            raise ValueError("--deidentify to a remote --out: name a local --mapping file for the pseudonyms")
        mapping = mapping or str(Path(path).expanduser()) + ".mapping.csv"
        if os.path.abspath(mapping) == os.path.abspath(str(Path(path).expanduser())):
            raise ValueError("--mapping must be another file than --out")
        pseudonyms = Pseudonyms(_salt(settings, run_id))
    info["deidentified"] = deidentify
    info["contains_uids"] = not deidentify
    if not deidentify:
        info["note"] = ("image keys and URLs are as stored: a DICOM archive's keys are its Study/Series/SOP Instance "
                        "UIDs (export --deidentify replaces them)")  # fmt: skip
    store = open_store(store_url, endpoint_url=settings.s3_endpoint_url)
    stats = ExportStats(out=out, mapping=mapping)
    with _Output(out, settings) as fh:
        if fmt == "coco":
            _write_coco(fh, settings, run_id, name, variant, store, stats, info, pseudonyms, concepts)
        else:
            _write_csv(fh, settings, run_id, variant, stats, info, pseudonyms)
    if pseudonyms is not None and mapping is not None:
        pseudonyms.write(mapping)
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
    provenance: dict[str, Any],
    pseudo: Pseudonyms | None,
    concepts: list[str] | None = None,
) -> None:
    info = {"description": f"PixelPerfect run {name}", "variant": variant, **provenance}
    names = concepts or ["opacity"]  # a concept run: one category per phrase, in the run's order
    categories = [{"id": i + 1, "name": n, "supercategory": "finding"} for i, n in enumerate(names)]
    fh.write('{"info": ' + json.dumps(info) + ', "licenses": [], "categories": ' + json.dumps(categories)
             + ',\n"images": [')  # fmt: skip
    for i, (image_id, key, width, height) in enumerate(_images(settings, run_id)):
        entry = {"id": image_id, "file_name": pseudo.key_of(key) if pseudo else key, "width": width, "height": height}
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
                    "seg_url": None if pseudo else seg_url,
                }
                fh.write(("\n" if first else ",\n") + json.dumps(entry))
                first = False
                stats.annotations += 1
    fh.write("]}\n")


def _write_csv(
    fh: IO[str],
    settings: Settings,
    run_id: int,
    variant: str | None,
    stats: ExportStats,
    provenance: dict[str, Any],
    pseudo: Pseudonyms | None,
) -> None:
    for name, value in provenance.items():  # header lines: read with a CSV reader's comment="#"
        fh.write(f"# {name}: {value}\n")
    writer = csv.writer(fh)
    writer.writerow(CSV_COLUMNS)
    last = None
    for image_id, key, width, height, seg, seg_url in _segments(settings, run_id, variant):
        stats.images += image_id != last
        last = image_id
        if pseudo is not None:
            key, mask_url, seg_url = pseudo.key_of(key), "", ""
        else:
            mask_url = seg.mask_key
        writer.writerow([
            key, width, height, seg.variant, seg.prompt_index, seg.prompt_kind, json.dumps(seg.prompt), seg.area,
            seg.score, seg.stability, seg.consistency_std, seg.consistency_iou, seg.dice, seg.iou, mask_url,
            seg_url or "",
        ])  # fmt: skip
        stats.annotations += 1
