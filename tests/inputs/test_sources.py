"""A source's listing: image keys streamed, the rest counted."""

from __future__ import annotations

from pathlib import Path

import pytest

from pixelperfect.storage import (
    LocalStore,
)


def test_a_listing_streams_image_keys_and_counts_the_rest(tmp_path: Path) -> None:
    """The producer's listing of an object store: image-like keys in order, other objects counted as skipped, no
    patient tracking (file keys match annotations by stem), attribute filters refused."""
    from pixelperfect.inputs.sources import SourceListing

    store = LocalStore(tmp_path)
    for key in ("b/2.dcm", "a/1.png", "labels.csv", "c/1.2.840.5", ".hidden.png"):
        store.put(key, b"x")
    listing = SourceListing(store, track_patients=True)
    assert list(listing) == ["a/1.png", "b/2.dcm"]
    assert listing.skipped == 3 and not listing.track_patients and listing.patient_hashes == {}
    with pytest.raises(ValueError, match="attribute filters apply to DICOM archives"):
        list(SourceListing(store, {"Modality": ["CR"]}))
