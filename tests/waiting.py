"""Waiting in tests: on conditions, with a deadline on a monotonic clock, never fixed sleeps."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float, message: str | Callable[[], str] = "",
               interval: float = 0.2) -> T:
    """Poll ``predicate`` until it returns something truthy, and return that.

    Raises AssertionError naming ``message`` (a string, or a callable for costly details such
    as a log tail) when ``timeout`` seconds pass first. The predicate may raise to fail early.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            detail = message() if callable(message) else message
            raise AssertionError(f"condition not met within {timeout:.0f}s: {detail}")
        time.sleep(interval)
