"""Partitions, not only crashes (issue 32): workers on hosts of their own (network namespaces, ``netns.py``) are cut
off from Redis, PostgreSQL and S3 — all at once or one at a time — while a batch is in their hands, for longer than
its lease, and healed with the batch still there. So are the orphan sweep and the producer.

Every scenario: another worker takes the images over after the lease; the cut-off worker's late final transaction
writes nothing (fenced, or ended by the server); no image is lost or written twice; every mask object is
sha256-equal to the mask its row describes (the fixed-cost model's mask is its prompt box, so it can be rebuilt);
encoder calls beyond one per image (``model_work``) stay within the images that were in the cut-off hands.

The moment of the cut is chosen, not drawn: the worker waits at a *hold* (``worker.py``: in the encoder, inside its
final transaction, in the sweep between its SQL mark and its publish) until the test has cut its host off.

``make test`` runs the short scenario (a worker cut off from everything by a link down); ``make partition``
(``PP_PARTITION=1``) runs them all and writes the table (``/tmp/pixelperfect-partition-table.tsv``).
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PIXELPERFECT, ROOT
from tests.partitions.cluster import BATCH, Cluster, HostWorker, Services, cluster
from tests.partitions.conftest import PARTITION
from tests.partitions.scenarios import LEASE, MODEL_S, Outcome, done_by, log_times, outcome, taken_over

pytestmark = [pytest.mark.integration, pytest.mark.slow]

whole_set = pytest.mark.skipif(not PARTITION, reason="make partition (PP_PARTITION=1) runs every partition scenario")

#: Images of a batch-cut scenario: enough that work is left for the healed worker after the heal.
IMAGES = 100
#: How long a cut lasts: well past the lease (the visibility timeout), so the images change hands meanwhile.
CUT_S = 2.5 * LEASE
SETTINGS: dict[str, Any] = {"visibility_timeout": LEASE, "orphan_sweep_s": 5}


def needs_iptables(services: Services, how: str) -> None:
    if how in ("drop", "reject") and not services.network.iptables:
        pytest.skip("iptables is not installed (scripts/system-deps.sh installs it): no firewall cuts")


def task_id_of(c: Cluster, ids: list[int]) -> str:
    """The message (Celery task id) holding the leases on ``ids``."""
    owners = {r[0] for r in c.query("select lease_owner from images where id = any(:ids)", ids=ids)}
    assert len(owners) == 1 and None not in owners, owners
    return str(owners.pop())


def batch_cut(
    services: Services,
    tmp_path: Path,
    scenario: str,
    *,
    point: str = "model",
    how: str = "link",
    ports: tuple[str, ...] | None = None,
    keep_until_taken: bool = False,
) -> tuple[Outcome, HostWorker, float]:
    """Two workers; ``w1`` is held at ``point`` with its first batch, its host cut off (``how``, from ``ports`` or
    everything), released, and healed after :data:`CUT_S`; then the rest waits for ``w1`` (``w2`` stops consuming),
    so the time it takes to finish a batch again is measured. Returns (outcome, ``w1``, heal time)."""
    needs_iptables(services, how)
    with cluster(services, tmp_path, **SETTINGS) as c:
        c.upload_archive(IMAGES)
        w1, w2 = c.start_workers(2, MODEL_S)
        w1.hold(point)
        c.submit("p")
        w1.wait_held(point)
        inflight = c.leased_by(w1)
        message = task_id_of(c, inflight)
        assert len(inflight) == BATCH and c.model_work()[0] >= BATCH  # its batch is in the encoder's hands
        t_cut = w1.host.cut([services.ports[p] for p in ports] if ports else None, how=how)
        if keep_until_taken:  # it reaches the database: its batch must outlast the lease to be taken over
            c.wait_until("the redelivered message claims the batch", lambda: set(c.leased_by(w2)) >= set(inflight),
                         4 * LEASE)  # fmt: skip
        w1.release(point)
        t_taken = c.wait_until("w2 takes the batch over", lambda: taken_over(c, inflight, w2), 6 * LEASE)
        time.sleep(max(0.0, t_cut + CUT_S - time.time()))
        if ports != ("redis",):  # it reaches no database while cut off: nothing refused yet
            assert w1.fenced() == 0, w1.tail()
        c.consume(w2, on=False)  # what is left waits for the healed worker: its recovery is measured, not a race
        t_heal = w1.host.heal()
        back = c.wait_until("w1 finishes a batch of its own again", lambda: c.first_done_after(w1, t_heal), 90)
        c.consume(w2, on=True)
        c.wait_drained()
        result = outcome(c, scenario)
        result.takeover_s, result.recover_s = t_taken - t_cut, (c.first_done_after(w1, t_heal) or back) - t_heal
        assert t_taken < t_heal, "the images changed hands while the worker was cut off"
        assert f"segment_batch[{message}] received" in w2.tail(10**7), "its message came back to the broker"
        assert done_by(c, inflight) == dict.fromkeys(inflight, w2.node)
        # each host under its own name: in the leases' and the model-work record's host:pid, in worker_host
        hosts = {str(r[0]).rsplit(":", 1)[0] for r in c.query("select distinct worker from model_work")}
        assert hosts == {w1.node, w2.node}, hosts
        assert w1.node.split("@")[1] != w2.node.split("@")[1] or not services.network.uts
        assert {r[0] for r in c.query("select distinct worker_host from images")} == {w1.node, w2.node}
        result.notes.append(f"cut {how} {'+'.join(ports or ('all',))} at {point} for {CUT_S:.0f}s (lease {LEASE}s)")
        return result, w1, t_heal


# --- cut off from everything ------------------------------------------------------------------------------------


@pytest.mark.timeout(300)
@pytest.mark.parametrize("how", ["link", pytest.param("drop", marks=whole_set)])
def test_a_worker_cut_off_from_everything_mid_batch_is_taken_over_and_its_late_write_fenced(
    services: Services, tmp_path: Path, how: str, partition_table: list[dict[str, object]]
) -> None:
    """``link``: the host's cable pulled (its veth's root end down); ``drop``: its firewall drops every packet to and
    from the services. Either way its batch outlives the lease in its hands: the message comes back to the broker,
    the other worker takes the images over, and when the host comes back its final transaction is fenced."""
    result, w1, t_heal = batch_cut(services, tmp_path, f"everything ({how})", how=how)
    assert w1.fenced() == BATCH, w1.tail()  # its late final transaction: refused, image by image
    resolved = [t for t in log_times(w1.log, r"were taken over by another delivery") if t >= t_heal - 1]
    result.notes.append(f"late write refused {resolved[0] - t_heal:.1f}s after the heal" if resolved else "")
    partition_table.append(result.row())
    result.check(wasted_at_most=BATCH)


# --- cut off inside its final transaction -----------------------------------------------------------------------


@whole_set
@pytest.mark.timeout(300)
def test_a_worker_cut_off_inside_its_final_transaction_does_not_hold_the_takeover_back(
    services: Services, tmp_path: Path, partition_table: list[dict[str, object]]
) -> None:
    """The host goes dark right after its fence locked the batch's rows (``SELECT … FOR UPDATE``). The server ends
    that silent transaction after half a lease (``control.limit_idle``), so the redelivered message claims the rows
    instead of waiting on the locks until the heal; the healed worker's commit fails and writes nothing."""
    result, w1, t_heal = batch_cut(services, tmp_path, "inside the final transaction", point="fence")
    assert w1.fenced() == 0  # its transaction did not get as far as refusing: the server had ended it
    ended = [t for t in log_times(w1.log, r"idle-in-transaction timeout|server closed the connection") if t >= t_heal]
    assert ended, w1.tail()
    assert "Connection to broker lost" not in w1.tail(10**7), "the consumer restarted (a failed import?)"
    result.fenced = BATCH  # refused by the server rather than by the fence
    result.notes.append(f"its commit failed {ended[0] - t_heal:.1f}s after the heal (the server had ended it)")
    partition_table.append(result.row())
    result.check(wasted_at_most=BATCH)


# --- asymmetric: one service out of reach -----------------------------------------------------------------------


@whole_set
@pytest.mark.timeout(300)
def test_a_worker_reaching_postgres_but_not_redis_writes_nothing_once_its_message_went_elsewhere(
    services: Services, tmp_path: Path, partition_table: list[dict[str, object]]
) -> None:
    """It cannot acknowledge, so its message comes back to the broker after the visibility timeout and the other
    worker takes the images (the same task id claims them at once). Its batch, still running against a database
    it reaches, loses its leases and its final transaction is fenced: it writes nothing."""
    result, w1, _ = batch_cut(services, tmp_path, "PostgreSQL yes, Redis no", how="drop", ports=("redis",),
                                    keep_until_taken=True)  # fmt: skip
    assert w1.fenced() == BATCH, w1.tail()
    partition_table.append(result.row())
    result.check(wasted_at_most=BATCH)


@whole_set
@pytest.mark.timeout(300)
def test_a_worker_reaching_redis_but_not_postgres_never_acknowledges_what_it_could_not_write(
    services: Services, tmp_path: Path, partition_table: list[dict[str, object]]
) -> None:
    """Its final transaction cannot reach the database: it must not acknowledge the message (the other worker
    received the same message id after the lease — only an unacknowledged message comes back), and after the heal
    its final transaction is fenced."""
    result, w1, t_heal = batch_cut(services, tmp_path, "Redis yes, PostgreSQL no", how="drop",
                                         ports=("postgres",))  # fmt: skip
    assert w1.fenced() == BATCH, w1.tail()
    resolved = [t for t in log_times(w1.log, r"were taken over by another delivery") if t >= t_heal - 1]
    result.notes.append(f"late write refused {resolved[0] - t_heal:.1f}s after the heal (TCP backoff)")
    partition_table.append(result.row())
    result.check(wasted_at_most=BATCH)


@whole_set
@pytest.mark.timeout(420)
def test_workers_reaching_both_but_not_s3_pause_the_run_and_no_row_names_a_missing_mask(
    services: Services, tmp_path: Path, partition_table: list[dict[str, object]]
) -> None:
    """Both workers lose the store with their batches in the encoder (REJECT: connections refused at once; with
    DROP each of boto's 8 attempts waits its 10 s connect timeout). boto retries, the batch is retried, and then —
    its retries spent on a store that refuses — the run pauses itself (issue 31) instead of failing its images:
    state ``paused``, the reason naming the store, every image still queued, no segment row, none naming a missing
    mask. After the heal, submitting the run again resumes it, each image done once."""
    n = 2 * BATCH
    needs_iptables(services, "reject")
    with cluster(services, tmp_path, visibility_timeout=180, task_max_retries=1, orphan_sweep_s=5) as c:
        c.upload_archive(n)
        workers = c.start_workers(2, MODEL_S)
        for w in workers:
            w.hold("model")
        c.submit("p")
        for w in workers:
            w.wait_held("model")
        t_cut = time.time()
        for w in workers:
            w.host.cut([services.ports["s3"]], how="reject")
            w.release("model")
        c.wait_until("the run paused itself", lambda: c.query("select state from runs")[0][0] == "paused", 300,
                     poll=0.5)  # fmt: skip
        t_paused = time.time()
        assert services.redis is not None
        redis = services.redis
        c.wait_until("both messages acknowledged", lambda: redis.backlog() == (0, 0), 120)  # nothing in flight
        paused = outcome(c, "S3 no")
        why = str(c.query("select state_reason from runs")[0][0])
        assert paused.audit.failed == 0 and paused.audit.segments == 0 and paused.audit.missing_objects == [], paused
        assert c.counts()["queued"] == n, c.counts()
        # the masks could not be stored, then (the batch's retry) its images could not be read: the last one is named
        assert "could not be" in why and " s3://" in why and "connection refused" in why, why
        retries = sum(len(log_times(w.log, r"retry \d+ in")) for w in workers)
        assert retries >= 2, [w.tail() for w in workers]  # each batch was retried before the run paused
        t_heal = time.time()
        for w in workers:
            w.host.heal()
        result_submit = c.submit("p")  # resumes the paused run: its queued images are published again
        assert result_submit.pending == n, result_submit
        c.wait_drained()
        result = outcome(c, "S3 no (both workers)")
        result.recover_s = c.wait_until("done", lambda: c.counts()["done"] == n, 5) - t_heal
        assert {r[0] for r in c.query("select attempts from images")} == {1}  # written once: nothing failed first
        assert c.query("select state, state_reason from runs")[0] == ("active", None)
        result.notes.append(f"cut reject s3 at model; {retries} batch retries; run paused {t_paused - t_cut:.0f}s "
                            "after the cut, 0 failed; done after the heal by `submit`")  # fmt: skip
        partition_table.append(result.row())
        result.check(wasted_at_most=n)  # the first encoder pass of each image, before its masks could be stored


# --- the orphan sweep and the producer --------------------------------------------------------------------------


def message_keys(raw: bytes) -> list[str]:
    """The image keys named by a ``segment_batch`` message as it waits in the Redis list."""
    message = json.loads(raw)
    body = message["body"]
    if message.get("properties", {}).get("body_encoding") == "base64":
        body = base64.b64decode(body)
    return [str(k) for k in json.loads(body)[0][1]]


@whole_set
@pytest.mark.timeout(300)
def test_the_orphan_sweep_cut_off_between_its_sql_mark_and_its_publish_loses_nothing(
    services: Services, tmp_path: Path, partition_table: list[dict[str, object]]
) -> None:
    """A message is lost (popped off the queue, as in a Redis restart). The worker that sweeps for it stamps its
    images published again in SQL and is cut off from Redis before it can publish them: its publish fails (a new
    broker connection, refused after ``socket_connect_timeout``) or, had it gone out late, would cost no model
    work. The other worker's sweep finds the images one interval later and publishes them."""
    assert services.redis is not None
    needs_iptables(services, "drop")
    with cluster(services, tmp_path, visibility_timeout=LEASE, orphan_sweep_s=3) as c:
        c.upload_archive(10 * BATCH)
        c.submit("p")
        lost_keys = message_keys(services.redis.client().rpop("gpu"))  # the broker lost this message
        workers = c.start_workers(2, MODEL_S, holds=("sweep",))
        c.wait_until("a worker sweeps", lambda: any((w.holds / "sweep.held").exists() for w in workers), 60)
        sweeper = next(w for w in workers if (w.holds / "sweep.held").exists())
        other = next(w for w in workers if w is not sweeper)
        other.release("sweep")
        t_cut = sweeper.host.cut([services.ports["redis"]], how="drop")
        sweeper.release("sweep")
        ids = [int(r[0]) for r in c.query("select id from images where key = any(:k)", k=[f"{k}" for k in lost_keys])]
        assert len(ids) == BATCH
        t_taken = c.wait_until("the other sweep publishes them", lambda: all(done_by(c, ids).values()), 6 * LEASE)
        time.sleep(max(0.0, t_cut + CUT_S - time.time()))
        t_heal = sweeper.host.heal()
        t_quiet = c.wait_drained()
        result = outcome(c, "orphan sweep cut off before publishing")
        swept = {w.node: len(log_times(w.log, r"had no message in the broker")) for w in workers}
        assert swept[other.node] >= 1, swept  # the other worker's sweep found them again
        late = sum(len(log_times(w.log, r"'skipped': [1-9]")) for w in workers)
        failed = len(log_times(sweeper.log, r"orphan sweep failed"))
        result.takeover_s, result.recover_s = t_taken - t_cut, t_quiet - t_heal
        result.notes.append(f"cut drop redis after the SQL mark; sweeps {swept}; {failed} failed sweep(s) of the "
                            f"cut-off one; {late} late message(s), skipped without model work")  # fmt: skip
        partition_table.append(result.row())
        result.check(wasted_at_most=0)  # nothing was in a worker's hands: no encoder call twice


@whole_set
@pytest.mark.timeout(300)
def test_the_producer_cut_off_mid_submit_finishes_after_the_heal(
    services: Services, tmp_path: Path, partition_table: list[dict[str, object]]
) -> None:
    """``pixelperfect submit`` runs on a host of its own, paced by backpressure (2 batches in the queue), and is
    cut off from everything mid-publish for longer than a lease. The workers drain what was published and wait;
    the orphan sweep leaves the images alone (the producer notes ``published_at`` after each group of up to 200
    batches, so none has it yet); after the heal the producer carries on and finishes."""
    with cluster(services, tmp_path, visibility_timeout=LEASE, orphan_sweep_s=3, max_queued_batches=2) as c:
        c.upload_archive(IMAGES)
        c.start_workers(2, MODEL_S)
        host = c.hosts[2]
        source, labels = f"s3://{c.bucket}/archive/images", f"s3://{c.bucket}/archive/labels.csv"
        argv = [PIXELPERFECT, "submit", source, "--run", "p", "--model", "sam_tiny", "--checkpoint", "random",
                "--annotations", labels, "--batch-size", str(BATCH)]  # fmt: skip
        log = tmp_path / "producer.log"
        with log.open("wb") as fh:
            producer = subprocess.Popen(host.command(argv), env=c.stack.env(max_queued_batches=2), stdout=fh,
                                        stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)  # fmt: skip
        try:
            c.wait_until("a third done", lambda: c.counts()["done"] >= IMAGES // 3, 120)
            t_cut, at_cut = host.cut(how="link"), c.counts()["done"]
            time.sleep(CUT_S)
            stalled, t_heal = c.counts()["done"], host.heal()
            assert stalled < IMAGES, "the producer was not held up by the cut"
            c.wait_until("the producer publishes again", lambda: c.counts()["done"] > stalled, 90)
            assert producer.wait(120) == 0, log.read_text(errors="replace")[-3000:]
        finally:
            if producer.poll() is None:
                producer.kill()
        c.wait_drained()
        result = outcome(c, "producer cut off mid-submit")
        first = c.query("select min(finished_at) from images where finished_at > to_timestamp(:t)", t=t_heal)[0][0]
        result.recover_s = first.timestamp() - t_heal
        swept = sum(len(log_times(w.log, r"had no message in the broker")) for w in c.workers)
        assert swept == 0, "the sweep published images the producer had not published yet"
        result.notes.append(f"cut link with {at_cut}/{IMAGES} done, {stalled} done when healed; submit exit 0; "
                            "swept 0")  # fmt: skip
        partition_table.append(result.row())
        result.check(wasted_at_most=0)
        assert t_cut < t_heal


@whole_set
@pytest.mark.timeout(300)
def test_a_late_ack_after_the_heal_drops_the_second_delivery_and_the_sweep_brings_its_images_back(
    services: Services, tmp_path: Path, partition_table: list[dict[str, object]]
) -> None:
    """Acknowledgements after a partition. ``w1`` is cut off from Redis with its batch; the message comes back and
    ``w2`` takes it (same message, same delivery tag). When ``w1`` is healed it acknowledges the message: Redis's
    record of ``w2``'s delivery goes with it (kombu acknowledges by tag). Were ``w2`` to die now, nothing would
    bring the message back — its pool process is killed to see: the orphan sweep publishes the images again once
    ``w2``'s lease has expired, and each image is still written once."""
    assert services.redis is not None
    redis = services.redis.client()
    needs_iptables(services, "drop")
    with cluster(services, tmp_path, visibility_timeout=LEASE, orphan_sweep_s=3) as c:
        c.upload_archive(2 * BATCH)
        w1, w2 = c.start_workers(2, MODEL_S)
        w1.hold("model")
        c.submit("p")
        w1.wait_held("model")
        inflight = c.leased_by(w1)
        c.wait_until("w2 finishes the other batch", lambda: c.counts()["done"] == BATCH, 60)
        w2.hold("model")
        t_cut = w1.host.cut([services.ports["redis"]], how="drop")
        c.wait_until("w2 holds the batch again", lambda: set(c.leased_by(w2)) >= set(inflight), 6 * LEASE)
        w2.wait_held("model")
        w1.release("model")
        c.wait_until("w1's late final transaction is fenced", lambda: w1.fenced() == BATCH, 60)
        assert redis.hlen("unacked") == 1  # w2's delivery, on record
        t_heal = w1.host.heal()
        t_acked = c.wait_until("w1's late ack", lambda: redis.hlen("unacked") == 0, 90)
        assert c.leased_by(w2) == inflight  # ... while w2 still works on the message: its record is gone
        for pid in w2.pool_pids():
            os.kill(pid, signal.SIGKILL)
        w2.release("model")
        t_back = c.wait_until("the sweep brings the images back", lambda: all(done_by(c, inflight).values()), 60)
        c.wait_drained()
        result = outcome(c, "late ack, then the second holder dies")
        swept = sum(len(log_times(w.log, rf"{BATCH} queued image\(s\) had no message")) for w in c.workers)
        assert swept >= 1 and result.fenced == BATCH
        result.takeover_s, result.recover_s = t_back - t_cut, t_back - t_heal
        result.notes.append(f"cut drop redis; late ack {t_acked - t_heal:.1f}s after the heal removed w2's "
                            f"delivery record; w2's pool SIGKILLed; swept {swept}x, done {t_back - t_acked:.1f}s "
                            "after the ack")  # fmt: skip
        partition_table.append(result.row())
        result.check(wasted_at_most=2 * BATCH)  # w1's pass and w2's killed pass over the batch
