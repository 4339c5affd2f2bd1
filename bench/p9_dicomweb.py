"""P9: a DICOMweb source against the local Orthanc beside S3 (moto): QIDO-RS listing keys/s (paged) and WADO-RS
fetch ms/image (stored bytes, ``transfer-syntax=*``), the same phantom DICOMs in both. Needs Orthanc on
127.0.0.1:8042 (scripts/services.sh); the studies it stores are deleted afterwards."""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import requests
from common import Measure, load_average, s3_server

ORTHANC = "http://127.0.0.1:8042"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--page", type=int, default=50)
    args = parser.parse_args()

    import pydicom

    from pixelperfect.config import Settings
    from pixelperfect.storage import S3Store, make_s3_client
    from pixelperfect.storage.dicomweb import DicomwebStore
    from pixelperfect.synthetic.phantoms import write_phantoms

    work = Path(tempfile.mkdtemp(prefix="pp-p9-"))
    write_phantoms(work, args.images, seed=31, size=args.size, fmt="dicom")
    paths = sorted((work / "images").glob("*.dcm"))
    before = set(requests.get(f"{ORTHANC}/studies", timeout=10).json())
    pacs = DicomwebStore(f"dicomweb+{ORTHANC}/dicom-web", Settings(dicomweb_page_size=args.page))
    try:
        for i in range(0, len(paths), 20):
            assert not pacs.store([pydicom.dcmread(p) for p in paths[i : i + 20]])
        started = time.perf_counter()
        keys = list(pacs.list())
        qido = len(keys) / (time.perf_counter() - started)
        mine = keys[: args.images]
        started = time.perf_counter()
        for key in mine:
            pacs.get(key)
        wado_ms = (time.perf_counter() - started) * 1000 / len(mine)
        with s3_server() as endpoint:
            client = make_s3_client(endpoint)
            client.create_bucket(Bucket="p9-bench")
            for p in paths:
                client.put_object(Bucket="p9-bench", Key=f"images/{p.name}", Body=p.read_bytes())
            s3 = S3Store("p9-bench", "images", endpoint_url=endpoint)
            started = time.perf_counter()
            s3_keys = list(s3.list())
            s3_list = len(s3_keys) / (time.perf_counter() - started)
            started = time.perf_counter()
            for key in s3_keys:
                s3.get(key)
            s3_ms = (time.perf_counter() - started) * 1000 / len(s3_keys)
    finally:
        for study in set(requests.get(f"{ORTHANC}/studies", timeout=10).json()) - before:
            requests.delete(f"{ORTHANC}/studies/{study}", timeout=30)
    size_kib = paths[0].stat().st_size / 1024
    Measure("P9", "QIDO-RS listing", qido, "keys/s", details=[
        f"{len(keys)} instances in pages of {args.page}; S3 (moto) listing {s3_list:.0f} keys/s",
    ]).print()  # fmt: skip
    Measure("P9", "WADO-RS fetch", wado_ms, "ms/image", details=[
        f"{len(mine)} instances of {size_kib:.0f} KiB ({args.size}²); S3 (moto) GET {s3_ms:.1f} ms/image; "
        f"load {load_average():.2f}",
    ]).print()  # fmt: skip


if __name__ == "__main__":
    main()
