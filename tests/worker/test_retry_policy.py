"""One retry policy: the Celery task's autoretry options and the embedded runner's waits come from the settings'
RetryPolicy, whose countdowns are Celery's own exponential backoff."""

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


def test_the_task_carries_the_policy_of_the_settings() -> None:
    from pixelperfect.worker.tasks import segment_batch

    task = segment_batch._get_current_object() if hasattr(segment_batch, "_get_current_object") else segment_batch
    policy = Settings().retry_policy
    assert task.autoretry_for == (Exception,)
    assert task.max_retries == policy.max_retries == Settings().task_max_retries
    assert task.retry_backoff == policy.backoff_s and task.retry_backoff_max == RETRY_BACKOFF_MAX_S
    assert task.retry_jitter is policy.jitter and task.default_retry_delay == 0
    assert task.acks_late and task.reject_on_worker_lost


def test_visibility_timeout_is_checked_against_the_policy() -> None:
    settings = Settings(visibility_timeout=41, retry_backoff_s=10, task_max_retries=3)
    assert settings.retry_policy.longest_countdown() == 40
    with pytest.raises(ValueError, match="must exceed the longest retry countdown"):
        Settings(visibility_timeout=40, retry_backoff_s=10, task_max_retries=3)
