"""``pixelperfect review RUN --below METRIC=VALUE … [--out CSV] [--stow-to URL]``: which images a person should
look at after a bulk run.

The segments whose scores fall below the thresholds come from SQL alone (:func:`~pixelperfect.db.segs.below_thresholds`:
one pass over the run's segments, no pixels). They are written as CSV to ``--out`` (one row per segment: image key,
variant, prompt, the metrics below their threshold, the SEG's SOPInstanceUID). For a run over DICOM (a
``dicomweb+http(s)://`` or ``dimse://`` source, or a run with ``--output …dicom-seg``), one Key Object Selection
document per study selects those source images and their SEGs, titled 113000 "Of Interest" with the reason as its
text (``pipeline/output/dicomkos.py``), stored at ``<run>/kos/<study>.dcm`` in the run's store and sent to
``--stow-to`` (default: the run's own ``--stow-to``). The KOS's evidence is headers only: the source's from WADO-RS
metadata (DICOMweb) or the stored file read up to its pixels, the SEG's from the run's store.
"""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pixelperfect.config import Settings
from pixelperfect.db import repo
from pixelperfect.db import segs as seg_repo
from pixelperfect.db.session import session_scope
from pixelperfect.pipeline.output.dicomkos import build_kos
from pixelperfect.pipeline.output.dicomseg import SegAlgorithm
from pixelperfect.storage import is_archive_url, join_key, open_store, validate_key

CSV_COLUMNS = ("image_key", "variant", "prompt_index", "below", "seg_sop_instance_uid")


@dataclass
class ReviewStats:
    segments: int = 0
    images: int = 0
    studies: int = 0
    kos: list[str] = field(default_factory=list)  # URLs of the stored KOS documents
    stowed: int = 0
    refused: dict[str, str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)  # studies whose KOS could not be built (and why)


def parse_below(items: list[str]) -> dict[str, float]:
    """``["consistency_iou=0.8", "score=0.5"]`` -> ``{"consistency_iou": 0.8, "score": 0.5}``; ``ValueError``."""
    out: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            if not sep:
                raise ValueError
            out[name.strip()] = float(value)
        except ValueError:
            raise ValueError(f"--below {item!r}: write METRIC=VALUE, e.g. consistency_iou=0.8") from None
    return out


def kos_key(run: str, study_uid: str) -> str:
    return validate_key(join_key(run, "kos", f"{study_uid}.dcm"))


def review_run(
    name: str, settings: Settings, *, below: dict[str, float], out: str | None = None, stow_to: str | None = None
) -> ReviewStats:
    """List run ``name``'s segments below ``below``; CSV to ``out``; KOS per study for a DICOM run (stored, sent
    to ``stow_to`` or the run's target). Raises ``LookupError`` (unknown run), ``ValueError`` (bad metric)."""
    with session_scope(settings.database_url) as session:
        row = repo.get_run(session, name=name)
        if row is None:
            raise LookupError(f"no run named {name!r} in the database")
        run_id, source_url, store_url = row.id, row.source_url, row.store_url
        run_settings = dict(row.settings or {})
        algorithm = SegAlgorithm(row.model, row.checkpoint_sha256, "", row.code_version, name,
                                 bool(run_settings.get("research_use", True)))  # fmt: skip
        hits = list(seg_repo.below_thresholds(session, run_id=run_id, below=below))
    stats = ReviewStats(segments=len(hits), images=len({h[0] for h in hits}))
    if out:
        path = Path(out).expanduser()
        with path.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(CSV_COLUMNS)
            for key, variant, prompt, low, seg_uid in hits:
                writer.writerow([key, variant, prompt, json.dumps(low, sort_keys=True), seg_uid or ""])
    dicom = is_archive_url(source_url) or "dicom-seg" in (run_settings.get("outputs") or [])
    if not dicom or not hits:
        return stats
    _write_kos(stats, hits, below, algorithm, source_url, store_url, stow_to or run_settings.get("stow_to"), settings)
    return stats


def _write_kos(
    stats: ReviewStats,
    hits: list[tuple[str, str, int, dict[str, float], str | None]],
    below: dict[str, float],
    algorithm: SegAlgorithm,
    source_url: str,
    store_url: str,
    target: str | None,
    settings: Settings,
) -> None:
    import pydicom

    source = open_store(source_url, settings)
    store = open_store(store_url, settings)
    reasons: dict[str, set[str]] = defaultdict(set)
    segs: dict[str, set[str]] = defaultdict(set)
    for key, variant, _prompt, low, seg_uid in hits:
        reasons[key] |= {f"{m} {v:.3f} < {below[m]:g}" for m, v in low.items()}
        if seg_uid:
            segs[key].add(variant)
    by_study: dict[str, list[Any]] = defaultdict(list)
    study_keys: dict[str, list[str]] = defaultdict(list)
    for key in sorted(reasons):
        try:
            header = source.header(key)
        except Exception as exc:
            stats.errors.append(f"{key}: no header: {type(exc).__name__}: {exc}")
            continue
        study = str(header.StudyInstanceUID)
        by_study[study].append(header)
        study_keys[study].append(key)
        for variant in sorted(segs.get(key, ())):
            try:  # the SEG as the worker stored it (worker/segout.py seg_key)
                by_study[study].append(store.header(join_key(algorithm.run, "seg", key, f"{variant}.dcm")))
            except Exception as exc:
                stats.errors.append(f"{key}: SEG {variant} not readable: {type(exc).__name__}: {exc}")
    thresholds = ", ".join(f"{m} < {v:g}" for m, v in below.items())
    documents = []
    for study, headers in by_study.items():
        n = sum(1 for h in headers if str(getattr(h, "Modality", "")) != "SEG")
        found = "; ".join(sorted({r for key in study_keys[study] for r in reasons[key]}))
        reason = f"PixelPerfect review of run {algorithm.run!r}: {n} image(s) with {thresholds}: {found}"
        try:
            _uid, data = build_kos(headers, reason, algorithm)
        except ValueError as exc:
            stats.errors.append(f"study {study}: {exc}")
            continue
        key = kos_key(algorithm.run, study)
        store.put(key, data, "application/dicom")
        stats.kos.append(store.url_for(key))
        documents.append(pydicom.dcmread(io.BytesIO(data)))
    stats.studies = len(documents)
    if target and documents:
        refused = open_store(target, settings).store(documents)
        stats.refused = refused
        stats.stowed = len(documents) - len(refused)


__all__ = ["CSV_COLUMNS", "ReviewStats", "parse_below", "review_run"]
