"""Retry timing: 0.5 s doubling to 60 s, jittered, never before the platform's hint."""

from __future__ import annotations

import pytest

from app.delivery.backoff import retry_delay_s


@pytest.mark.parametrize(
    ("attempt", "ceiling"),
    [(1, 0.5), (2, 1.0), (3, 2.0), (7, 32.0), (8, 60.0), (40, 60.0), (5000, 60.0)],
)
def test_delay_doubles_up_to_a_minute(attempt: int, ceiling: float) -> None:
    assert retry_delay_s(attempt, rand=lambda: 1.0) == ceiling
    assert retry_delay_s(attempt, rand=lambda: 0.0) == ceiling / 2


def test_a_wait_hint_longer_than_the_backoff_wins() -> None:
    assert retry_delay_s(1, hint_s=7.0, rand=lambda: 1.0) == 7.0


def test_a_wait_hint_shorter_than_the_backoff_does_not_shorten_it() -> None:
    assert retry_delay_s(5, hint_s=0.1, rand=lambda: 1.0) == 8.0
