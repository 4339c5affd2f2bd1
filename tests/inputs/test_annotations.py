from __future__ import annotations

import pytest

from pixelperfect.inputs.annotations import (
    AnnotationError,
    match_masks,
    match_to_keys,
    parse_box_csv,
    parse_rsna,
    stem,
)

RSNA = """patientId,x,y,width,height,Target
0004cfab-14fd-4e49-80ba-63a80b6bddd6,,,,,0
00436515-870c-4b36-a041-de91049b9ab4,264.0,152.0,213.0,379.0,1
00436515-870c-4b36-a041-de91049b9ab4,562.0,152.0,256.0,453.0,1
ffffffff-not-in-source,1,2,3,4,1
"""


def test_rsna_xywh_becomes_xyxy_with_several_boxes_and_negatives() -> None:
    boxes = parse_rsna(RSNA)
    assert boxes["0004cfab-14fd-4e49-80ba-63a80b6bddd6"] == []
    assert boxes["00436515-870c-4b36-a041-de91049b9ab4"] == [[264.0, 152.0, 477.0, 531.0], [562.0, 152.0, 818.0, 605.0]]
    keys = ["dcm/00436515-870c-4b36-a041-de91049b9ab4.dcm", "dcm/0004cfab-14fd-4e49-80ba-63a80b6bddd6.dcm"]
    matched = match_to_keys(boxes, keys)
    assert set(matched) == set(keys)  # the row for an image not in the source is ignored
    assert len(matched[keys[0]]) == 2


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("abc,1,2,3,,1", "column 'height' is not a number"),
        ("abc,1,2,-3,4,1", "width and height must be positive"),
        ("abc,1,2,3,4,2", "Target must be 0 or 1"),
        ("abc,1,2,3,4,0", "Target=0 row must have empty coordinates"),
        (",1,2,3,4,1", "empty patientId"),
        ("abc,1,2,3,4", "expected 6 fields"),
        ("abc,nan,2,3,4,1", "not finite"),
    ],
)
def test_malformed_rsna_row_is_rejected_naming_its_line(row: str, message: str) -> None:
    text = "patientId,x,y,width,height,Target\nok,1,1,5,5,1\n" + row + "\n"
    with pytest.raises(AnnotationError, match=message) as info:
        parse_rsna(text, "labels.csv")
    assert "labels.csv:3" in str(info.value)


def test_rsna_header_is_checked() -> None:
    with pytest.raises(AnnotationError, match="header lacks column"):
        parse_rsna("id,x,y\n1,2,3\n")


def test_generic_box_csv() -> None:
    boxes = parse_box_csv("key,x1,y1,x2,y2\na.png,1,2,30,40\na.png,5,5,9,9\n")
    assert boxes == {"a.png": [[1, 2, 30, 40], [5, 5, 9, 9]]}
    with pytest.raises(AnnotationError, match=r"boxes.csv:2: box must have x2 > x1"):
        parse_box_csv("key,x1,y1,x2,y2\na.png,10,2,3,40\n")


def test_stems_and_mask_matching() -> None:
    assert stem("images/abc.png") == "abc" and stem("1.2.840.5.dcm") == "1.2.840.5" and stem("noext") == "noext"
    assert match_masks(["masks/a.png", "masks/b.png"], ["images/a.png", "images/c.png"]) == {
        "images/a.png": "masks/a.png"
    }
