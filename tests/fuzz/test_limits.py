"""The limits checked before pydicom reads an object (pipeline/decode/limits.py), the settings that set them, and
the per-image time budget (too_slow)."""

from __future__ import annotations

import pytest

from pixelperfect.config import Settings
from pixelperfect.pipeline.decode.image import UnsupportedImageError
from pixelperfect.pipeline.decode.limits import DecodeLimits, precheck_dicom
from pixelperfect.pipeline.decode.reader import decode_image
from pixelperfect.worker.fetch import FetchedImage, ImageTodo, check_budget, decode_limits
from tests.fuzz.bombs import deflate_bomb, many_elements, nested_sequences
from tests.fuzz.seeds import _phantoms


@pytest.mark.parametrize("name,data", list(_phantoms()), ids=[n for n, _ in _phantoms()])
def test_real_files_pass_the_precheck(name: str, data: bytes) -> None:
    precheck_dicom(data, name, DecodeLimits(max_sequence_depth=1, max_elements=200))


def test_each_limit_is_a_setting() -> None:
    settings = Settings(max_inflated_bytes=4096, max_sequence_depth=3, max_dicom_elements=500)
    limits = decode_limits(settings)
    assert limits == DecodeLimits(4096, 3, 500)
    with pytest.raises(UnsupportedImageError, match="too_deep"):
        decode_image(nested_sequences(4), "a.dcm", limits=limits)
    decode_image(nested_sequences(3), "a.dcm", limits=limits)  # at the limit: it decodes
    with pytest.raises(UnsupportedImageError, match="too_many_elements"):
        decode_image(many_elements(501), "a.dcm", limits=limits)
    with pytest.raises(UnsupportedImageError, match="inflate_limit"):
        decode_image(deflate_bomb(1), "a.dcm", limits=limits)


def test_a_deflated_file_within_the_limit_decodes() -> None:
    import io

    import pydicom

    data = _phantoms()[0][1]
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    ds = pydicom.dcmread(io.BytesIO(data))

    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    deflated = out.getvalue()
    assert decode_image(deflated, "d.dcm").shape == decode_image(data, "e.dcm").shape
    with pytest.raises(UnsupportedImageError, match="inflate_limit"):
        decode_image(deflated, "d.dcm", limits=DecodeLimits(max_inflated_bytes=len(deflated) // 4))


def test_an_image_over_the_time_budget_ends_too_slow() -> None:
    f = FetchedImage(ImageTodo("a.png", 1, None))
    f.timings = {"download": 9.0, "decode": 0.7, "preprocess": 0.4}
    check_budget(f, 2.0)
    assert f.reason is None
    check_budget(f, 0)  # no budget
    assert f.reason is None
    check_budget(f, 1.0)
    assert f.reason == "too_slow" and "1.1 s" in (f.error or "")
