"""Ground truth at import: RSNA boxes, generic box CSVs, mask files. XYWH becomes XYXY here, once.

RSNA ``stage_2_train_labels.csv``: ``patientId,x,y,width,height,Target``, one row per box, ``x,y`` the top-left
corner, empty coordinates where ``Target=0``.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable
from pathlib import PurePosixPath

from pixelperfect.pipeline.prompt.boxes import xywh_to_xyxy
from pixelperfect.storage import IMAGE_SUFFIXES

RSNA_COLUMNS = ("patientId", "x", "y", "width", "height", "Target")
BOX_COLUMNS = ("key", "x1", "y1", "x2", "y2")


class AnnotationError(ValueError):
    """A malformed annotation file; the message names the file and line."""


def stem(key: str) -> str:
    """``images/abc.dcm`` -> ``abc`` (RSNA ``patientId`` matching); only a known image suffix is removed, so
    UID-named files (``1.2.840.1.dcm`` -> ``1.2.840.1``) keep their dots."""
    name = PurePosixPath(key).name
    base, dot, suffix = name.rpartition(".")
    return base if dot and base and f".{suffix.lower()}" in IMAGE_SUFFIXES else name


def _float(value: str, column: str, where: str) -> float:
    try:
        out = float(value)
    except ValueError:
        raise AnnotationError(f"{where}: column {column!r} is not a number: {value!r}") from None
    if not math.isfinite(out):
        raise AnnotationError(f"{where}: column {column!r} is not finite: {value!r}")
    return out


def _rows(text: str, columns: tuple[str, ...], name: str) -> Iterable[tuple[str, dict[str, str]]]:
    reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff")))
    try:
        fieldnames = reader.fieldnames
    except csv.Error as exc:  # a stray carriage return in an unquoted field, a field over the csv module's limit
        raise AnnotationError(f"{name}:{reader.line_num}: not CSV: {exc}") from None
    missing = [c for c in columns if c not in (fieldnames or [])]
    if missing:
        raise AnnotationError(f"{name}:1: header lacks column(s) {', '.join(missing)}; expected {','.join(columns)}")
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise AnnotationError(f"{name}:{reader.line_num}: not CSV: {exc}") from None
        where = f"{name}:{reader.line_num}"
        if None in row or any(row.get(c) is None for c in columns):
            raise AnnotationError(f"{where}: expected {len(columns)} fields, got a different number")
        yield where, row


def parse_rsna(text: str, name: str = "labels.csv") -> dict[str, list[list[float]]]:
    """``{patientId: [[x1, y1, x2, y2], ...]}``; negatives (``Target=0``) map to an empty list."""
    out: dict[str, list[list[float]]] = {}
    for where, row in _rows(text, RSNA_COLUMNS, name):
        pid, target = row["patientId"].strip(), row["Target"].strip()
        if not pid:
            raise AnnotationError(f"{where}: empty patientId")
        if target not in ("0", "1"):
            raise AnnotationError(f"{where}: Target must be 0 or 1, got {target!r}")
        boxes = out.setdefault(pid, [])
        if target == "0":
            if any(row[c].strip() for c in ("x", "y", "width", "height")):
                raise AnnotationError(f"{where}: Target=0 row must have empty coordinates")
            continue
        x, y, w, h = (_float(row[c].strip(), c, where) for c in ("x", "y", "width", "height"))
        try:
            boxes.append(xywh_to_xyxy(x, y, w, h))
        except ValueError as exc:
            raise AnnotationError(f"{where}: {exc}") from None
    return out


def parse_box_csv(text: str, name: str = "boxes.csv") -> dict[str, list[list[float]]]:
    """Generic ``key,x1,y1,x2,y2`` (XYXY pixels), several rows per key allowed."""
    out: dict[str, list[list[float]]] = {}
    for where, row in _rows(text, BOX_COLUMNS, name):
        key = row["key"].strip()
        if not key:
            raise AnnotationError(f"{where}: empty key")
        x1, y1, x2, y2 = (_float(row[c].strip(), c, where) for c in ("x1", "y1", "x2", "y2"))
        if x2 <= x1 or y2 <= y1:
            raise AnnotationError(f"{where}: box must have x2 > x1 and y2 > y1, got {[x1, y1, x2, y2]}")
        out.setdefault(key, []).append([x1, y1, x2, y2])
    return out


def match_to_keys(boxes: dict[str, list[list[float]]], keys: Iterable[str]) -> dict[str, list[list[float]]]:
    """Attach boxes to image keys: exact key first, then the key's stem. Boxes of unknown images are dropped."""
    by_stem: dict[str, str] = {}
    matched: dict[str, list[list[float]]] = {}
    for key in keys:
        if key in boxes:
            matched[key] = boxes[key]
        else:
            by_stem.setdefault(stem(key), key)
    for ident, key_boxes in boxes.items():
        found = by_stem.get(ident) or by_stem.get(stem(ident))
        if found is not None and found not in matched:
            matched[found] = key_boxes
    return matched


def parse_annotations(text: str, fmt: str, name: str) -> dict[str, list[list[float]]]:
    if fmt == "rsna":
        return parse_rsna(text, name)
    if fmt == "csv":
        return parse_box_csv(text, name)
    raise AnnotationError(f"unknown annotations format {fmt!r}: use rsna or csv")


def match_masks(mask_keys: Iterable[str], image_keys: Iterable[str]) -> dict[str, str]:
    """``{image key: mask key}`` by shared stem (``images/a.png`` <-> ``masks/a.png``)."""
    masks = {stem(m): m for m in mask_keys}
    return {key: masks[stem(key)] for key in image_keys if stem(key) in masks}


EXEMPLAR_LABELS = {"1": 1, "positive": 1, "pos": 1, "+": 1, "0": 0, "negative": 0, "neg": 0, "-": 0}


def _exemplar_label(row: dict[str, str], where: str) -> int:
    text = (row.get("label") or "1").strip().lower()
    if text not in EXEMPLAR_LABELS:
        raise AnnotationError(f"{where}: label must be positive/negative (or 1/0), got {text!r}")
    return EXEMPLAR_LABELS[text]


def parse_exemplars(text: str, fmt: str, name: str) -> dict[str, list[list[float]]]:
    """Concept exemplar boxes ``{key: [[x1, y1, x2, y2, label], ...]}`` (label 1 positive, 0 negative) in the
    box formats the annotations use, with an optional ``label`` column (``positive``/``negative`` or ``1``/``0``,
    default positive): ``csv`` = ``key,x1,y1,x2,y2[,label]``; ``rsna`` = ``patientId,x,y,width,height,Target
    [,label]`` (``Target=0`` rows carry no box and are skipped)."""
    out: dict[str, list[list[float]]] = {}
    if fmt == "csv":
        for where, row in _rows(text, BOX_COLUMNS, name):
            key = row["key"].strip()
            if not key:
                raise AnnotationError(f"{where}: empty key")
            box = [_float(row[c].strip(), c, where) for c in ("x1", "y1", "x2", "y2")]
            if box[2] <= box[0] or box[3] <= box[1]:
                raise AnnotationError(f"{where}: box must have x2 > x1 and y2 > y1, got {box}")
            out.setdefault(key, []).append([*box, float(_exemplar_label(row, where))])
        return out
    if fmt == "rsna":
        for where, row in _rows(text, RSNA_COLUMNS, name):
            pid = row["patientId"].strip()
            if not pid:
                raise AnnotationError(f"{where}: empty patientId")
            if row["Target"].strip() != "1":
                continue
            x, y, w, h = (_float(row[c].strip(), c, where) for c in ("x", "y", "width", "height"))
            try:
                box = xywh_to_xyxy(x, y, w, h)
            except ValueError as exc:
                raise AnnotationError(f"{where}: {exc}") from None
            out.setdefault(pid, []).append([*box, float(_exemplar_label(row, where))])
        return out
    raise AnnotationError(f"unknown exemplars format {fmt!r}: use csv or rsna")
