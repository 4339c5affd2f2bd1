"""The preview sheet: the original and each variant side by side, as a function and through preview."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from pixelperfect.pipeline.preprocess.preview import GAP, LABEL_HEIGHT, encode_png, panel_size, render_preview
from pixelperfect.pipeline.preprocess.variants import parse_variant
from pixelperfect.synthetic.phantoms import write_phantoms


def test_render_preview_layout() -> None:
    image = np.linspace(0, 4095, 300 * 200).reshape(300, 200).astype(np.uint16)
    variants = [parse_variant("clahe"), parse_variant("sobel")]
    sheet = render_preview(image, variants, max_side=150)
    height, width = panel_size(image.shape, 150)
    assert (height, width) == (150, 100)
    assert sheet.shape == (LABEL_HEIGHT + height, 3 * width + 2 * GAP, 3) and sheet.dtype == np.uint8
    original = sheet[LABEL_HEIGHT:, :width, 0]
    expected = cv2.resize(parse_variant("raw")(image), (width, height), interpolation=cv2.INTER_AREA)
    assert np.array_equal(original, expected)
    assert sheet[:LABEL_HEIGHT, :width].max() > 0  # a caption was drawn
    grid = render_preview(image, variants * 2, max_side=150, columns=2)
    assert grid.shape == (3 * (LABEL_HEIGHT + height) + 2 * GAP, 2 * width + GAP, 3)
    assert panel_size((40, 30), 512) == (40, 30)  # never enlarged
    with pytest.raises(ValueError, match="max_side"):
        render_preview(image, variants, max_side=4)
    decoded = cv2.imdecode(np.frombuffer(encode_png(sheet), np.uint8), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(decoded, sheet)


def test_preview_command(tmp_path: Path, cli: typer.Typer) -> None:
    write_phantoms(tmp_path, 2, size=64, fmt="dicom")
    out = tmp_path / "sheet" / "preview.png"
    args = ["preview", str(tmp_path / "images" / "phantom-00001.dcm"), "--variant", "clahe", "--variant",
            "rapmed", "--variant", "mine=gaussian(k=5)|clahe", "--out", str(out)]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    sheet = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
    assert sheet.shape == (LABEL_HEIGHT + 64, 4 * 64 + 3 * GAP, 3)
    bad = CliRunner().invoke(cli, ["preview", str(out), "--variant", "gaussian(k=2)", "--out", str(out)])
    assert bad.exit_code == 2 and "gaussian" in bad.output
    missing = CliRunner().invoke(cli, ["preview", str(tmp_path / "none.png"), "--variant", "raw", "--out", str(out)])
    assert missing.exit_code == 2
