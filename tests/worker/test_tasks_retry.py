"""One retry policy: the Celery tasks' retries (read when a task runs) and the embedded runner's waits come from the
settings' RetryPolicy, whose countdowns are Celery's own exponential backoff."""

from __future__ import annotations

import random

import pytest
from celery.utils.time import get_exponential_backoff_interval

from pixelperfect.config import RETRY_BACKOFF_MAX_S, RetryPolicy, Settings


@pytest.mark.parametrize("backoff", [0.0, 0.2, 1.0, 2.0, 2.7, 10.0, 400.0])
def test_countdowns_are_celerys_backoff(backoff: float) -> None:
    policy = RetryPolicy(backoff, max_retries=8, jitter=False)
    for retries in range(12):
        celery = get_exponential_backoff_interval(
            factor=int(max(1.0, backoff)), retries=retries, maximum=RETRY_BACKOFF_MAX_S, full_jitter=False
        )
        assert policy.countdown(retries) == (celery if backoff else 0)
        assert policy.delay(retries) == policy.countdown(retries)
    jittered = RetryPolicy(backoff, max_retries=8, jitter=True)
    rng = random.Random(0)
    draws = [jittered.delay(3, rng) for _ in range(200)]
    assert all(0 <= d <= jittered.countdown(3) for d in draws)
    assert len(set(draws)) > 1 or jittered.countdown(3) == 0


def test_the_tasks_read_the_policy_when_they_run() -> None:
    """The batch tasks take their retry limit and backoff from the settings in force when a task runs, not from
    those of the process that imported the module: no autoretry options are fixed on the task at import."""
    from pixelperfect.config import get_settings, use_settings
    from pixelperfect.worker import tasks

    task = tasks.segment_batch
    assert not getattr(task, "autoretry_for", ()), "retry options fixed when the module was imported"
    assert task.acks_late and task.reject_on_worker_lost
    before = get_settings()
    try:
        use_settings(Settings(task_max_retries=2, retry_backoff_s=4, retry_jitter=False))
        assert [tasks.retry_countdown(n) for n in range(3)] == [4, 8, None]
        use_settings(Settings(task_max_retries=0))
        assert tasks.retry_countdown(0) is None  # no retry at all: the first failure gives up
        use_settings(Settings(task_max_retries=5, retry_backoff_s=0))
        assert [tasks.retry_countdown(n) for n in range(6)] == [0, 0, 0, 0, 0, None]
    finally:
        use_settings(before)


def test_visibility_timeout_is_checked_against_the_policy() -> None:
    settings = Settings(visibility_timeout=41, retry_backoff_s=10, task_max_retries=3)
    assert settings.retry_policy.longest_countdown() == 40
    with pytest.raises(ValueError, match="must exceed the longest retry countdown"):
        Settings(visibility_timeout=40, retry_backoff_s=10, task_max_retries=3)
