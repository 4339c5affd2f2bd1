"""``python -m tests.partitions.worker worker …``: the fault tests' fixed-cost ``pixelperfect worker``
(``tests/faults/soak.py``: the real pipeline, store, database and broker; a model that costs only a sleep) with
*holds*, so a test can cut a host off at a chosen moment of a batch rather than at a random one.

A hold is a file ``$PP_HOLD_DIR/<name>``; while it exists, the worker waits at that point (after writing
``<name>.held``, which the test waits for). The points:

- ``model``: in the encoder (the batch's images are leased and fetched; its masks not stored, no row written);
- ``fence``: inside the batch's final transaction, right after the fence (``control.held``) locked its rows;
- ``sweep``: in the orphan sweep, after the images were stamped published again in SQL, before their message is
  published to the broker.

Nothing else changes: a test that creates no hold file runs the fault tests' worker as it is.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

#: A hold never outlasts this (a test that failed to lift it must not leave a worker waiting for ever).
HOLD_LIMIT_S = 600.0


def hold(name: str) -> None:
    """Wait while ``$PP_HOLD_DIR/<name>`` exists (see the module docstring)."""
    root = os.environ.get("PP_HOLD_DIR")
    if not root:
        return
    path = Path(root) / name
    if not path.exists():
        return
    marker = Path(root) / f"{name}.held"  # written whole, then renamed: the test reads it as soon as it exists
    tmp = marker.with_name(f".{marker.name}.{os.getpid()}")
    tmp.write_text(f"{os.getpid()} {time.time():.3f}\n")
    os.replace(tmp, marker)
    deadline = time.monotonic() + HOLD_LIMIT_S
    while path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def install_holds() -> None:
    from pixelperfect.worker import leases, sweeper
    from tests.faults.soak import FixedCostSegmenter

    encode = FixedCostSegmenter.encode

    def held_encode(self: Any, images: Any) -> Any:
        hold("model")
        return encode(self, images)

    fence = leases.Hold.fence

    def held_fence(self: Any, session: Any) -> set[int]:
        kept = fence(self, session)
        hold("fence")
        return kept

    publish = sweeper.Sweeper.publish

    def held_publish(self: Any, run_id: int, keys: list[str]) -> None:
        hold("sweep")
        publish(self, run_id, keys)

    FixedCostSegmenter.encode = held_encode  # type: ignore[method-assign]
    leases.Hold.fence = held_fence  # type: ignore[method-assign]
    sweeper.Sweeper.publish = held_publish  # type: ignore[method-assign]


if __name__ == "__main__":
    from tests.faults.soak import install

    install(float(os.environ.get("PP_MODEL_SECONDS", "0") or 0))
    install_holds()
    from pixelperfect.cli import app

    sys.argv[0] = "pixelperfect"
    app()
