"""P1 trace: where the wall time of a zero-cost-model batch goes, part by part (the capacity line of P1).

Runs ``bench/p1_pipeline.py``'s measurement with the batch's parts timed as they run: the lease (``leases.acquire``,
one transaction), the model-work record and lease renewal before each encoder group (``Hold.before_model``, one
committed transaction per group, on the model thread), the overlapped flow (``BatchFlow.run``: fetch, decode,
preprocess, model, scores, PNGs, uploads) and the final transaction (``persist_batch``). Trees without a part
(before the leases) show none. Printed per replayed batch, in ms per image, beside its capacity.

Run: ``python bench/p1_trace.py [--images 8] [--repeats 2]`` (any checkout: the parts are looked up by name).
"""

from __future__ import annotations

import argparse
import importlib
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import common  # noqa: F401  (puts the checkout on sys.path)
import p1_pipeline

#: (module, attribute path) of each timed part; a part a tree lacks is skipped.
PARTS = {
    "lease": ("pixelperfect.worker.leases", "acquire"),
    "before_model": ("pixelperfect.worker.leases", "Hold.before_model"),
    "flow": ("pixelperfect.worker.flow", "BatchFlow.run"),
    "persist": ("pixelperfect.worker.persist", "persist_batch"),
}
_spent: dict[str, float] = defaultdict(float)
_calls: dict[str, int] = defaultdict(int)
batches: list[dict[str, Any]] = []


def _timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            _spent[name] += time.perf_counter() - t0
            _calls[name] += 1

    return wrapper


def install() -> list[str]:
    """Wrap every part this tree has, where ``run_batch`` looks it up; returns the parts found."""
    found = []
    for name, (module_name, path) in PARTS.items():
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        owner: Any = module
        *outer, attr = path.split(".")
        for part in outer:
            owner = getattr(owner, part, None)
        if owner is None or not hasattr(owner, attr):
            continue
        wrapped = _timed(name, getattr(owner, attr))
        setattr(owner, attr, wrapped)
        batch_module = importlib.import_module("pixelperfect.worker.batch")
        if not outer and getattr(batch_module, attr, None) is not None:  # imported by name into worker.batch
            setattr(batch_module, attr, wrapped)
        found.append(name)
    batch_module = importlib.import_module("pixelperfect.worker.batch")
    run_batch = batch_module.run_batch

    def traced(run_id: int, keys: Any, *args: Any, **kwargs: Any) -> Any:
        _spent.clear()
        _calls.clear()
        t0 = time.perf_counter()
        out = run_batch(run_id, keys, *args, **kwargs)
        batches.append({"images": len(keys), "wall": time.perf_counter() - t0, **_spent,
                        **{f"{k}_calls": v for k, v in _calls.items()}})  # fmt: skip
        return out

    batch_module.run_batch = traced  # p1_pipeline imports it from there when it runs
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    found = install()
    measures = p1_pipeline.run(args.images, args.repeats)
    capacity = measures[-1]
    capacity.print()
    # P1's batches: warm, the end-to-end repeats, the recording, the PNG replays, the DICOM replays
    first = 1 + args.repeats + 1
    for i, batch in enumerate(batches[first : first + args.repeats]):
        n = batch["images"]
        parts = ", ".join(
            f"{name} {1000 * batch.get(name, 0.0) / n:.1f} ms ({batch.get(name + '_calls', 0)}x)" for name in found
        )
        rest = batch["wall"] - sum(batch.get(name, 0.0) for name in found if name != "before_model")  # inside flow
        print(f"P1trace replay {i}: {n / batch['wall']:.1f} images/s, wall {1000 * batch['wall'] / n:.1f} ms/image "
              f"= {parts}, rest {1000 * rest / n:.1f} ms", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
