"""P9: a PACS as the source, DICOMweb and DIMSE side by side against the local Orthanc, beside S3 (moto): listing
keys/s (QIDO-RS paged; C-FIND study by study) and fetch ms/image (WADO-RS ``transfer-syntax=*``; C-GET over one
association), the same phantom DICOMs in all. Needs Orthanc on 127.0.0.1:8042 with its DICOM server on 4242
(scripts/services.sh); the studies it stores are deleted afterwards."""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import requests
from common import Measure, load_average, s3_server

ORTHANC = "http://127.0.0.1:8042"
DIMSE = "dimse://ORTHANC@127.0.0.1:4242"


def timed(fn):  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--page", type=int, default=50)
    parser.add_argument("--nagle", type=int, default=20, help="C-GETs with Nagle's algorithm on (pynetdicom default)")
    args = parser.parse_args()

    import pydicom

    from pixelperfect.config import Settings
    from pixelperfect.storage import S3Store, make_s3_client, open_store
    from pixelperfect.storage import dimse as dimse_module
    from pixelperfect.synthetic.phantoms import write_phantoms

    work = Path(tempfile.mkdtemp(prefix="pp-p9-"))
    write_phantoms(work, args.images, seed=31, size=args.size, fmt="dicom")
    paths = sorted((work / "images").glob("*.dcm"))
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    mine = [f"{h.StudyInstanceUID}/{h.SeriesInstanceUID}/{h.SOPInstanceUID}" for h in headers]
    before = set(requests.get(f"{ORTHANC}/studies", timeout=10).json())
    settings = Settings(dicomweb_page_size=args.page)
    pacs = open_store(f"dicomweb+{ORTHANC}/dicom-web", settings)
    archive = open_store(DIMSE, settings)
    try:
        for i in range(0, len(paths), 20):
            assert not pacs.store([pydicom.dcmread(p) for p in paths[i : i + 20]])
        # listings, alternating, best of two each: the whole archive (other data in Orthanc is listed by both)
        qido_s = cfind_s = float("inf")
        for _ in range(2):
            keys, seconds = timed(lambda: list(pacs.list()))
            qido_s = min(qido_s, seconds)
            dimse_keys, seconds = timed(lambda: list(archive.list()))
            cfind_s = min(cfind_s, seconds)
        assert set(mine) <= set(keys) and set(mine) <= set(dimse_keys)
        # fetches, alternating per image: WADO-RS, then C-GET on the one reused association
        wado_s = cget_s = 0.0
        for key in mine:
            wado, seconds = timed(lambda k=key: pacs.get(k))
            wado_s += seconds
            received, seconds = timed(lambda k=key: archive.get(k))
            cget_s += seconds
            assert len(received) > 0 and len(wado) > 0
        # C-GET with Nagle's algorithm left on at our end, as pynetdicom leaves it (a store of its own)
        no_delay = dimse_module._no_delay
        nagle = open_store(DIMSE, settings)
        dimse_module._no_delay = lambda event: None  # type: ignore[assignment]
        try:
            nagle.get(mine[0])  # its association opens here, untimed
        finally:
            dimse_module._no_delay = no_delay  # type: ignore[assignment]
        nagle_s = cget_fast_s = 0.0
        for key in mine[: args.nagle]:
            nagle_s += timed(lambda k=key: nagle.get(k))[1]
            cget_fast_s += timed(lambda k=key: archive.get(k))[1]
        with s3_server() as endpoint:
            client = make_s3_client(endpoint)
            client.create_bucket(Bucket="p9-bench")
            for p in paths:
                client.put_object(Bucket="p9-bench", Key=f"images/{p.name}", Body=p.read_bytes())
            s3 = S3Store("p9-bench", "images", endpoint_url=endpoint)
            s3_keys, seconds = timed(lambda: list(s3.list()))
            s3_list = len(s3_keys) / seconds
            started = time.perf_counter()
            for key in s3_keys:
                s3.get(key)
            s3_ms = (time.perf_counter() - started) * 1000 / len(s3_keys)
    finally:
        for study in set(requests.get(f"{ORTHANC}/studies", timeout=10).json()) - before:
            requests.delete(f"{ORTHANC}/studies/{study}", timeout=30)
    size_kib = paths[0].stat().st_size / 1024
    load = load_average()
    Measure("P9", "QIDO-RS listing", len(keys) / qido_s, "keys/s", details=[
        f"{len(keys)} instances in pages of {args.page}; S3 (moto) listing {s3_list:.0f} keys/s",
    ]).print()  # fmt: skip
    Measure("P9", "C-FIND listing (DIMSE)", len(dimse_keys) / cfind_s, "keys/s", details=[
        f"{len(dimse_keys)} instances, study by study (1 study + 1 series + 1 image query per one-image study: "
        f"the worst case); QIDO-RS {len(keys) / qido_s:.0f} keys/s in the same run",
    ]).print()  # fmt: skip
    Measure("P9", "WADO-RS fetch", wado_s * 1000 / len(mine), "ms/image", details=[
        f"{len(mine)} instances of {size_kib:.0f} KiB ({args.size}²); S3 (moto) GET {s3_ms:.1f} ms/image; "
        f"load {load:.2f}",
    ]).print()  # fmt: skip
    Measure("P9", "C-GET fetch (DIMSE)", cget_s * 1000 / len(mine), "ms/image", details=[
        f"the same {len(mine)} instances, alternating with WADO-RS ({wado_s * 1000 / len(mine):.1f} ms/image); "
        f"with Nagle on at our end (pynetdicom's default): {nagle_s * 1000 / max(args.nagle, 1):.1f} vs "
        f"{cget_fast_s * 1000 / max(args.nagle, 1):.1f} ms/image over {args.nagle} images; load {load:.2f}",
    ]).print()  # fmt: skip


if __name__ == "__main__":
    main()
