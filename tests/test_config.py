"""The one settings object: what it refuses."""

from __future__ import annotations

import pytest

from pixelperfect.config import Settings


def test_visibility_timeout_must_exceed_the_longest_retry_countdown() -> None:
    with pytest.raises(ValueError, match="visibility_timeout=30s must exceed"):
        Settings(visibility_timeout=30, retry_backoff_s=10, task_max_retries=3)  # last countdown 40 s
    assert Settings(visibility_timeout=41, retry_backoff_s=10, task_max_retries=3).visibility_timeout == 41
