"""The gallery's tiles: each best/worst case's image with its mask, prompt and ground truth, as PNG data URIs.

The only part of the report that reads images and masks (through the store) and loads OpenCV and the decoder, so
the JSON and CSV reports never import them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from pixelperfect.config import Settings
from pixelperfect.evaluation import figures

log = logging.getLogger(__name__)


def tiles(
    cases: Sequence[dict[str, Any]], rank_metric: str, settings: Settings, fmt: Callable[[Any], str]
) -> list[dict[str, Any]]:
    """One ``{"uri", "caption"}`` per case (``uri`` ``None`` with a caption saying why when the image is gone)."""
    import cv2

    from pixelperfect.pipeline.decode.reader import decode_image
    from pixelperfect.storage import open_store, read_url

    def load(url: str) -> np.ndarray | None:
        try:
            raw = cv2.imdecode(np.frombuffer(read_url(url, endpoint_url=settings.s3_endpoint_url), np.uint8), 0)
        except Exception as exc:  # a missing object must not break the report: the tile says so
            log.warning("gallery: cannot read %s: %s", url, exc)
            return None
        return None if raw is None else raw > 0

    out: list[dict[str, Any]] = []
    for case in cases:
        try:
            data_bytes = open_store(case["source_url"], endpoint_url=settings.s3_endpoint_url).get(case["key"])
            pixels = decode_image(data_bytes, case["key"]).pixels
        except Exception as exc:
            log.warning("gallery: cannot read image %s: %s", case["key"], exc)
            out.append({"uri": None, "caption": f"image {case['key']} unavailable"})
            continue
        mask = load(case["mask_key"]) if case.get("mask_key") else None
        truth = load(case["gt_mask_key"]) if case.get("gt_mask_key") else None
        uri = figures.overlay_tile(pixels, mask, case["prompt"], truth, case.get("truth_boxes", []))
        caption = (
            f"{case['run']} / {case['variant']} — {case['key']} #{case['prompt_index']}: "
            f"{rank_metric} {fmt(case['value'])}, score {fmt(case['score'])}"
        )
        out.append({"uri": uri, "caption": caption})
    return out
