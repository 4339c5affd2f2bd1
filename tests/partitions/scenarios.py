"""What every partition scenario measures and checks afterwards: nothing lost, nothing written twice, every mask
object sha256-equal to the mask its row describes, model work beyond one encoder call per image within what was
in the cut-off hands, and the closing table's row."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.faults.runs import Audit, audit_run
from tests.faults.test_chaos_soak import mask_mismatches
from tests.partitions.cluster import Cluster, HostWorker

#: Lease = visibility timeout (s) of the scenarios: short, so a partition outlasts it in seconds.
LEASE = 6
#: The fixed-cost model's time per image (sleep): a batch of 4 takes ~1 s, long enough to be held.
MODEL_S = 0.25


@dataclass
class Outcome:
    scenario: str
    audit: Audit
    masks_checked: int
    masks_mismatched: list[str]
    encoder_calls: int
    encoded_images: int
    fenced: int
    takeover_s: float | None = None
    recover_s: float | None = None
    notes: list[str] = field(default_factory=list)
    retried: int = 0  # images failed once and done after `pixelperfect retry` (attempts 2 by design, not twice)

    @property
    def duplicated(self) -> int:
        """Segment rows beyond one per (image, variant, prompt) or the boxes, and images written twice."""
        return self.audit.duplicates - self.retried

    @property
    def wasted(self) -> int:
        """Encoder calls beyond one per image (``model_work`` rows)."""
        return self.encoder_calls - self.encoded_images

    def row(self) -> dict[str, object]:
        images = self.audit.done + self.audit.failed
        return {
            "scenario": self.scenario,
            "images": images,
            "lost": self.audit.lost,
            "duplicated": self.duplicated,
            "fenced": self.fenced,
            "encoder/image": f"{self.encoder_calls / max(self.audit.done, 1):.3f}",
            "takeover_s": "" if self.takeover_s is None else f"{self.takeover_s:.1f}",
            "recover_s": "" if self.recover_s is None else f"{self.recover_s:.1f}",
            "notes": "; ".join(self.notes),
        }

    def check(self, *, wasted_at_most: int, failed: int = 0) -> None:
        """The invariants of every scenario (see the module docstring)."""
        a = self.audit
        figures = f"{self.row()}; {a}"
        assert a.queued == 0 and a.lost == 0 and self.duplicated == 0, figures
        assert a.failed == failed, figures
        assert a.missing_objects == [] and a.bad_masks == [], f"a row names a missing or wrong mask: {figures}"
        assert self.masks_mismatched == [] and self.masks_checked == a.expected_segments, figures
        assert 0 <= self.wasted <= wasted_at_most, f"wasted {self.wasted} > {wasted_at_most} in flight: {figures}"


def outcome(c: Cluster, scenario: str, run: str = "p") -> Outcome:
    audit = audit_run(c.stack, c.services.s3, run)
    run_id = int(c.query("select id from runs where name = :n", n=run)[0][0])
    checked, mismatched = mask_mismatches(c.stack, c.services.s3, run_id)
    calls, distinct = c.model_work()
    fenced = sum(w.fenced() for w in c.workers)
    return Outcome(scenario, audit, checked, mismatched, calls, distinct, fenced)


_STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): ")


def log_times(log: Path, pattern: str) -> list[float]:
    """``time.time()`` of the worker log lines matching ``pattern`` (Celery stamps them in local time)."""
    found = []
    for line in log.read_text(errors="replace").splitlines():
        m = _STAMP.match(line)
        if m and re.search(pattern, line):
            found.append(dt.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp())
    return found


def done_by(c: Cluster, ids: list[int]) -> dict[int, Any]:
    """Image id → the node that wrote it (None while it is not done)."""
    return {i: (host if status == "done" else None) for i, status, host, _ in c.status_of(ids)}


def taken_over(c: Cluster, ids: list[int], by: HostWorker) -> bool:
    return all(host == by.node for host in done_by(c, ids).values())
