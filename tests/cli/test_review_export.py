"""``review`` and ``export --deidentify`` on SQL alone (SQLite, no services): the review list of a non-DICOM run is
CSV only, thresholds and bad metrics; pseudonyms are UIDs, stable per run (the salt is kept) and differ between
runs; archive keys are replaced part by part and the mapping restores them; bad mapping paths are refused."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest

from pixelperfect.config import Settings
from pixelperfect.db import repo
from pixelperfect.db.migrate import upgrade
from pixelperfect.db.models import Image, Segment
from pixelperfect.db.session import session_scope
from pixelperfect.export import Pseudonyms, export_run
from pixelperfect.review import parse_below, review_run
from tests.db.test_repo import RUN_FIELDS

UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
KEYS = ["1.2.840.1/1.2.840.2/1.2.840.3", "1.2.840.1/1.2.840.2/1.2.840.4", "1.2.840.9/1.2.840.8/1.2.840.7"]


def _settings(tmp_path: Path) -> Settings:
    url = f"sqlite:///{tmp_path / 'pp.db'}"
    upgrade(url)
    return Settings(database_url=url, store_url=str(tmp_path / "store"))


def _run(settings: Settings, name: str, scores: list[tuple[float, float]]) -> None:
    with session_scope(settings.database_url) as s:
        run = repo.create_run(s, name=name, fields={**RUN_FIELDS, "store_url": settings.store_url})
        s.flush()
        for key, (score, iou) in zip(KEYS, scores, strict=True):
            image = Image(run_id=run.id, key=key, status="done", width=8, height=8, n_segments=1)
            s.add(image)
            s.flush()
            s.add(Segment(run_id=run.id, image_id=image.id, variant="raw", prompt_index=0, prompt=[0, 0, 4, 4],
                          score=score, consistency_iou=iou, area=4, mask_key=f"file:///m/{key}/0.png"))  # fmt: skip


def test_review_of_a_non_dicom_run_is_csv_only(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    _run(settings, "plain", [(0.9, 0.95), (0.4, 0.9), (0.95, 0.5)])
    out = tmp_path / "review.csv"
    stats = review_run("plain", settings, below=parse_below(["consistency_iou=0.8", "score=0.5"]), out=str(out))
    rows = list(csv.DictReader(out.open()))
    assert [r["image_key"] for r in rows] == sorted([KEYS[1], KEYS[2]]) and stats.images == 2
    assert {r["image_key"]: r["below"] for r in rows}[KEYS[1]] == '{"score": 0.4}'
    assert stats.studies == 0 and stats.kos == []  # not a DICOM run: no KOS
    with pytest.raises(ValueError, match="choose from"):
        review_run("plain", settings, below={"area": 3})
    with pytest.raises(ValueError, match="METRIC=VALUE"):
        parse_below(["score"])
    with pytest.raises(LookupError):
        review_run("nope", settings, below={"score": 1})


def test_pseudonyms_are_uids_stable_per_salt() -> None:
    a, b = Pseudonyms("00" * 32), Pseudonyms("11" * 32)
    pseudo = a.key_of(KEYS[0])
    parts = pseudo.split("/")
    assert len(parts) == 3 and all(UID.match(p) and p.startswith("2.25.") and len(p) <= 64 for p in parts)
    assert a.key_of(KEYS[0]) == pseudo and b.key_of(KEYS[0]) != pseudo
    assert a.key_of(KEYS[1]).split("/")[:2] == parts[:2]  # the same study and series, the same pseudonyms
    named = a.key_of("patients/DOE_JANE/chest.png")
    assert named.endswith(".png") and "DOE" not in named and len(named) == 32 + 4


def test_deidentified_csv_export_is_stable_and_maps_back(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    _run(settings, "r1", [(0.9, 0.9)] * 3)
    first = export_run("r1", settings, fmt="csv", out=str(tmp_path / "a.csv"), deidentify=True)
    second = export_run("r1", settings, fmt="csv", out=str(tmp_path / "b.csv"), deidentify=True,
                        mapping=str(tmp_path / "b.map"))  # fmt: skip
    a, b = ((tmp_path / n).read_text() for n in ("a.csv", "b.csv"))
    assert a == b and "# contains_uids: False" in a and "# deidentified: True" in a
    assert not any(part in a for key in KEYS for part in key.split("/"))
    mapping = {
        r["pseudonym"]: r["original"] for r in csv.DictReader(Path(first.mapping or "").read_text().splitlines())
    }
    rows = list(csv.DictReader(line for line in a.splitlines() if not line.startswith("#")))
    assert sorted("/".join(mapping[p] for p in r["image_key"].split("/")) for r in rows) == sorted(KEYS)
    assert Path(second.mapping or "").read_text() == Path(first.mapping or "").read_text()
    plain = export_run("r1", settings, fmt="csv", out=str(tmp_path / "plain.csv"))
    assert plain.mapping is None and "# contains_uids: True" in (tmp_path / "plain.csv").read_text()
    with pytest.raises(ValueError, match="another file"):
        export_run("r1", settings, fmt="csv", out=str(tmp_path / "c.csv"), deidentify=True,
                   mapping=str(tmp_path / "c.csv"))  # fmt: skip
    with pytest.raises(ValueError, match="local --mapping"):
        export_run("r1", settings, fmt="csv", out="s3://bucket/x.csv", deidentify=True)
    _run(settings, "r2", [(0.9, 0.9)] * 3)  # another run, another salt: other pseudonyms
    export_run("r2", settings, fmt="csv", out=str(tmp_path / "r2.csv"), deidentify=True)
    other = (tmp_path / "r2.csv").read_text().splitlines()[-1].split(",")[0]
    assert other not in a
