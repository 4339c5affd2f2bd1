"""Export at scale: COCO export (RLE masks) of a run of N images x 2 segments, images/s and the exporting
process's peak RSS, measured for N/4 and N images in fresh processes to show how memory grows (goal: it does not
grow with the run: peak(N) / peak(N/4) <= 1.10). The run's rows and 512² mask PNGs are written directly."""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import Measure


def make_run(work: Path, n: int, size: int) -> str:
    import cv2
    import numpy as np

    from pixelperfect.db import bulk, repo
    from pixelperfect.db.migrate import upgrade
    from pixelperfect.db.session import session_scope
    from pixelperfect.pipeline.stages import encode_mask_png
    from pixelperfect.storage import LocalStore

    url = f"sqlite:///{work / 'pp.db'}"
    upgrade(url)
    store = LocalStore(work / "store")
    masks = []
    for p in range(2):
        m = np.zeros((size, size), np.uint8)
        cv2.ellipse(m, (size // 3 + p * size // 3, size // 2), (size // 8, size // 4), 0, 0, 360, 1, -1)
        masks.append(encode_mask_png(m.astype(bool)))
    with session_scope(url) as s:
        run = repo.create_run(s, name="big", fields={
            "source_url": "file:///x", "store_url": store.url, "model": "sam_tiny", "checkpoint": None,
            "checkpoint_sha256": None, "variants": [{"name": "raw", "spec": "", "hash": "0"}], "prompt_mode": "boxes",
            "settings": {}, "code_version": "bench", "config_hash": "0"})  # fmt: skip
        keys = [f"images/{i:07d}.dcm" for i in range(n)]
        bulk.register_images(s, run_id=run.id, keys=keys)
        ids = repo.images_by_key(s, run_id=run.id, keys=keys)
        for key in keys:
            segs = []
            for p in range(2):
                mk = f"big/masks/{key}/raw/{p}.png"
                store.put(mk, masks[p])
                segs.append({"run_id": run.id, "image_id": ids[key].id, "variant": "raw", "prompt_index": p,
                             "prompt_kind": "box", "prompt": [0, 0, 9, 9], "score": 0.9, "stability": 0.8,
                             "mask_key": store.url_for(mk)})  # fmt: skip
            repo.mark_done(s, image_id=ids[key].id, segments=segs, fields={"width": size, "height": size})
    return url


def child(url: str, out: str) -> None:
    from pixelperfect.config import Settings
    from pixelperfect.export import export_run

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    stats = export_run("big", Settings(database_url=url), fmt="coco", out=out)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"images": stats.images, "seconds": seconds, "peak_mib": peak, "before_mib": before}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--child", nargs=2)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    results = []
    for n in (args.images // 4, args.images):
        work = Path(tempfile.mkdtemp(prefix=f"pp-export-{n}-"))
        url = make_run(work, n, args.size)
        out = subprocess.run([sys.executable, __file__, "--child", url, str(work / "coco.json")],
                             capture_output=True, text=True, check=True)  # fmt: skip
        results.append((n, json.loads(out.stdout.strip().splitlines()[-1]), (work / "coco.json").stat().st_size))
    (n1, small, _), (n2, big, size_b) = results
    growth = big["peak_mib"] / small["peak_mib"]
    Measure("P10", "COCO export peak RSS, N / (N/4) images", growth, goal="<=1.10", details=[
        f"{n1} images: peak {small['peak_mib']:.0f} MiB ({small['before_mib']:.0f} MiB after imports), "
        f"{n1 / small['seconds']:.0f} images/s",
        f"{n2} images x 2 masks {args.size}²: peak {big['peak_mib']:.0f} MiB, {n2 / big['seconds']:.0f} images/s, "
        f"{size_b / 2**20:.1f} MiB of JSON",
    ]).print()  # fmt: skip


if __name__ == "__main__":
    main()
