"""P30: how long each bomb of tests/fuzz/bombs.py takes to be refused (a forked child, 200 MB over the interpreter),
and what decoding in a separate process per image would cost (the only way to interrupt a C codec): a forked child
that decodes and sends the array back through a pipe, against the same decode in-process.

Lines: ``P30 refuse <bomb> (<size> bytes, reason <r>, expected <r>) value=<s> s goal<=2 ok=yes|no`` (goal: the 2 s an
input may take in the fuzz contract) and ``P30 process-per-image <film>, forked child ÷ in-process (…) ratio=<r>``.
"""

from __future__ import annotations

import argparse
import os
import pickle
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _in_child(data: bytes, key: str) -> float:
    """Fork, decode in the child, send the pixels back pickled; seconds until the parent has them."""
    from pixelperfect.pipeline.decode.reader import decode_image

    start = time.perf_counter()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        payload = pickle.dumps(decode_image(data, key).pixels, protocol=5)
        with os.fdopen(write, "wb") as pipe:
            pipe.write(payload)
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        pixels = pickle.loads(pipe.read())
    os.waitpid(pid, 0)
    assert pixels.ndim == 2
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    from tests.fuzz.bombs import BOMBS, run

    for line in run(list(BOMBS)):
        ok = line["reason"] == line["expected"] and line["seconds"] <= 2.0
        # the reason and size in the line's text, so that bench/run.py reads it (ok: the reason expected, in time)
        what = f"refuse {line['name']} ({line['size']} bytes, reason {line['reason']}, expected {line['expected']})"
        print(f"P30 {what} value={line['seconds']:.3f} s goal<=2 ok={'yes' if ok else 'no'}", flush=True)
    from pixelperfect.pipeline.decode.reader import decode_image
    from pixelperfect.synthetic.archive_phantoms import archive_phantom

    for kind, shape in (("explicit_le", (2300, 2800)), ("jpeg_baseline", (1024, 1024))):
        data = archive_phantom(kind, 0, shape=shape)[0]
        decode_image(data, "warm.dcm")
        own, child = [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            decode_image(data, "a.dcm")
            own.append(time.perf_counter() - start)
            child.append(_in_child(data, "a.dcm"))
        best_own, best_child = min(own), min(child)
        print(f"P30 process-per-image {kind} {shape[1]}x{shape[0]}, forked child ÷ in-process (child "
              f"{1000 * best_child:.1f} ms, in-process {1000 * best_own:.1f} ms, best of {args.repeats}) "
              f"ratio={best_child / best_own:.2f}", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
