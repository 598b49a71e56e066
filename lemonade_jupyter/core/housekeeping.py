"""The router's background loop for memory: sample while someone needs it, evaluate eviction.

It knows nothing of the router: it is handed what to read (settings, whether anyone watches,
whether auto-evict is on) and what to call (sample, evaluate), so the eviction decision itself
stays a pure plan that the router carries out.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from .memory import MemorySample
from .settings import RouterSettings

log = logging.getLogger(__name__)

#: A client polled /health or streams events within this many seconds: keep sampling memory.
WATCHER_WINDOW_S = 15.0
#: The loop's longest nap between looks at its intervals.
LOOP_NAP_S = 1.0


async def memory_loop(
    *,
    settings: Callable[[], RouterSettings],
    sampling_needed: Callable[[], bool],
    evicting: Callable[[], bool],
    sample: Callable[[], Awaitable[MemorySample]],
    evaluate: Callable[[dict[str, float]], Awaitable[Any]],
) -> None:
    """Sample memory while needed, evaluate eviction while auto-evict is on; forever.

    It naps at most ``LOOP_NAP_S`` at a time and compares against the intervals each time,
    so an interval changed through ``/internal/set`` applies within a second (not after the
    old interval ran out). One failed round is logged and the loop goes on.
    """
    last_sample = last_eval = time.monotonic()  # the first round after one interval
    while True:
        await asyncio.sleep(min(settings().memory_sample_interval_s, LOOP_NAP_S))
        current = settings()
        now = time.monotonic()
        if now - last_sample < current.memory_sample_interval_s or not sampling_needed():
            continue
        last_sample = now
        try:
            taken = await sample()
            now = time.monotonic()
            if evicting() and now - last_eval >= current.eviction_interval_s:
                last_eval = now
                await evaluate(taken.pressure_by_device())
        except asyncio.CancelledError:
            raise
        except Exception:  # one bad round must not end the loop
            log.exception("Memory and eviction round failed")
