"""Poll until a condition holds, with a deadline: never assert after a bare sleep."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any

#: The default deadline. Generous: the machines that run these tests are shared and small, and
#: only a failing test waits this long.
DEADLINE_S = 60.0


def wait_for(predicate: Callable[[], Any], timeout: float = DEADLINE_S, what: str = "condition",
             interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy (and return that); fail after
    ``timeout`` seconds naming ``what``. For tests that drive servers from threads."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


async def wait_until(predicate: Callable[[], Any | Awaitable[Any]], timeout: float = DEADLINE_S,
                     what: str = "condition", interval: float = 0.02) -> Any:
    """``wait_for`` for a test on an event loop: the loop keeps running between polls.

    ``predicate`` may be a plain function or return an awaitable; the first truthy value is
    returned."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(interval)
