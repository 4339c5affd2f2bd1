"""Millimetres end to end (embedded, SQLite): DICOM phantoms carry their pixel spacing, so NSD and HD95 come out in
mm; a DICOM with a zero spacing is scored in px with the warning in its image row; PNGs take --pixel-spacing; RSNA
``Target = 0`` rows become labelled negatives; a report over the runs says that the units differ."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select

from pixelperfect.db.models import Annotation, Image, Run, Segment
from pixelperfect.db.session import session_scope
from pixelperfect.embedded import SubmitRequest, submit
from pixelperfect.evaluation.build import build_report
from pixelperfect.pipeline.options import ProcessSettings
from pixelperfect.synthetic.phantoms import write_phantoms
from tests.conftest import embedded_settings

pytestmark = pytest.mark.integration


def test_dicom_spacing_gives_mm_and_negatives_are_labelled(tmp_path: Path, tiny_checkpoint: Path) -> None:
    data = tmp_path / "dicom"
    write_phantoms(data, 6, seed=4, size=128, fmt="dicom", positive_fraction=0.5)
    rows = list(csv.DictReader((data / "labels.csv").open()))
    negatives = {r["patientId"] for r in rows if r["Target"] == "0"}
    positive = sorted({r["patientId"] for r in rows} - negatives)[0]
    assert negatives and positive, "the phantom set should hold labelled negatives and positives"
    bad = data / "images" / f"{positive}.dcm"  # a zero row spacing: unknown, with a warning, scored in px
    ds = pydicom.dcmread(bad)
    ds.PixelSpacing = [0.0, 0.2]
    ds.save_as(bad)
    shutil.copy(data / "images" / "phantom-00001.dcm", data / "images" / "unlabelled.dcm")  # not in labels.csv

    settings = embedded_settings(tmp_path)
    for run, source in (("dicom", data / "images"),):
        submit(SubmitRequest(source=str(source), run=run, model="sam_tiny", checkpoint=str(tiny_checkpoint),
                             variants=["raw"], annotations=str(data / "labels.csv"), gt_masks=str(data / "masks"),
                             process=ProcessSettings(nsd_tolerance=2.0, nsd_tolerance_mm=2.0)), settings)  # fmt: skip
    png = tmp_path / "png"
    write_phantoms(png, 3, seed=4, size=128)
    submit(SubmitRequest(source=str(png / "images"), run="png", model="sam_tiny", checkpoint=str(tiny_checkpoint),
                         variants=["raw"], annotations=str(png / "labels.csv"), gt_masks=str(png / "masks"),
                         process=ProcessSettings(pixel_spacing=(0.5, 0.25))), settings)  # fmt: skip

    with session_scope(settings.database_url) as s:
        images = {(i.run.name, i.key): i for i in s.scalars(select(Image))}
        expected = 0.168 * 1024 / 128  # phantoms.PIXEL_SPACING_MM at the reference size, scaled to 128 px
        other = sorted({r["patientId"] for r in rows} - negatives)[1]
        good = images[("dicom", f"{other}.dcm")].meta or {}
        assert good["spacing_mm"] == pytest.approx([expected, expected]) and good["spacing_source"] == "PixelSpacing"
        zero = images[("dicom", f"{positive}.dcm")].meta or {}
        assert zero["spacing_mm"] is None and "not > 0" in zero["spacing_warning"]
        assert (images[("png", "phantom-00001.png")].meta or {})["spacing_source"] == "--pixel-spacing"
        units = {}
        joined = select(Segment, Image.key, Run.name).join(Image, Image.id == Segment.image_id)
        for seg, key, run in s.execute(joined.join(Run, Run.id == Segment.run_id)):
            if seg.nsd is not None:
                units.setdefault((run, key), set()).add(seg.surface_unit)
        assert units and all(u == ({"px"} if key == f"{positive}.dcm" else {"mm"}) for (_, key), u in units.items())
        labelled = {i.key for (run, _), i in images.items() if run == "dicom" and i.labelled}
        assert labelled == {f"phantom-{i:05d}.dcm" for i in range(6)}  # every row of labels.csv, not unlabelled.dcm
        dicom_id = images[("dicom", f"{other}.dcm")].run_id
        boxed = set(s.scalars(select(Annotation.image_key).where(Annotation.run_id == dicom_id)))
        assert boxed and not boxed & {f"{n}.dcm" for n in negatives}  # negatives: labelled, without a box

    report = json.loads(build_report(["dicom", "png"], tmp_path / "out", settings=settings, fmt="json").read_text())
    assert report["notes"] and "Units differ" in report["notes"][0]
    dicom_raw = report["runs"][0]["variants"][0]
    assert dicom_raw["surface_unit"] == "mixed" and dicom_raw["nsd_mean"] is None  # mm and px never in one mean
    assert set(dicom_raw["surface_by_unit"]) == {"mm", "px"}
    assert dicom_raw["surface_by_unit"]["mm"]["nsd_tolerance"] == 2.0
    png_raw = report["runs"][1]["variants"][0]
    assert png_raw["surface_unit"] == "mm" and png_raw["nsd_mean"] == png_raw["surface_by_unit"]["mm"]["nsd_mean"]
