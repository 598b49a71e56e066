"""The bounded wait for a model's parallel slots: first come first served, a full queue
refused at once with 429, a cancelled wait leaves the queue, a model that stops serving
sends its waiters back to the router."""

from __future__ import annotations

import asyncio

import pytest

from lemonade_jupyter.core import request_slots
from lemonade_jupyter.core.catalog import ModelSpec
from lemonade_jupyter.core.lifecycle import ChangeSignal
from lemonade_jupyter.core.live_model import LiveModel
from lemonade_jupyter.core.options import LoadOptions
from lemonade_jupyter.core.preferences import ModelPreferences
from lemonade_jupyter.core.settings import RouterSettings
from lemonade_jupyter.errors import QueueFullError


def model(parallel: int | None = 1, max_queue: int | None = None) -> LiveModel:
    prefs = ModelPreferences()
    prefs.set_options("user.m", LoadOptions(parallel=parallel, max_queue=max_queue))
    return LiveModel(spec=ModelSpec(name="user.m", checkpoint="/m.gguf"), preferences=prefs,
                     changes=ChangeSignal())


def test_bound_comes_from_the_option_else_the_setting():
    assert request_slots.queue_bound(model(), RouterSettings()) is None  # -1: no bound
    assert request_slots.queue_bound(model(), RouterSettings(max_queue=3)) == 3
    assert request_slots.queue_bound(model(max_queue=0), RouterSettings(max_queue=3)) == 0
    assert request_slots.queue_bound(model(max_queue=-1), RouterSettings(max_queue=3)) is None


def test_unknown_slot_count_never_waits():
    m = model(parallel=None)  # no option, no backend that said
    for _ in range(50):
        assert request_slots.has_free_slot(m)
        request_slots.take(m, m.changes)


def test_waiters_take_the_slot_in_arrival_order_and_a_full_queue_is_refused():
    async def scenario() -> None:
        m = model(parallel=1)
        request_slots.take(m, m.changes)  # the one slot is busy
        assert not request_slots.has_free_slot(m)
        order: list[int] = []

        async def wait(i: int) -> None:
            assert await request_slots.wait_for_slot(m, 2, m.changes, lambda: True)
            request_slots.take(m, m.changes)
            order.append(i)

        first = asyncio.ensure_future(wait(1))
        await asyncio.sleep(0)
        second = asyncio.ensure_future(wait(2))
        await asyncio.sleep(0)
        assert len(m.slot_queue) == 2 and m.snapshot().queued == 2 and m.is_busy
        with pytest.raises(QueueFullError) as info:
            await request_slots.wait_for_slot(m, 2, m.changes, lambda: True)
        assert info.value.status_code == 429 and info.value.headers() == {"Retry-After": "1"}
        request_slots.give_back(m, m.changes)
        await first
        assert order == [1] and not second.done()  # one slot: the second still waits
        request_slots.give_back(m, m.changes)
        await second
        assert order == [1, 2] and not m.slot_queue and m.busy_slots == 1

    asyncio.run(scenario())


def test_a_new_request_does_not_overtake_those_waiting():
    async def scenario() -> None:
        m = model(parallel=1)
        request_slots.take(m, m.changes)
        waiter = asyncio.ensure_future(
            request_slots.wait_for_slot(m, None, m.changes, lambda: True))
        await asyncio.sleep(0)
        request_slots.give_back(m, m.changes)
        # A slot is free, but someone waits for it: a newcomer must queue behind.
        assert not request_slots.has_free_slot(m)
        assert await waiter is True

    asyncio.run(scenario())


def test_cancelled_wait_leaves_the_queue_and_stopped_model_sends_waiters_back():
    async def scenario() -> None:
        m = model(parallel=1)
        request_slots.take(m, m.changes)
        waiter = asyncio.ensure_future(
            request_slots.wait_for_slot(m, None, m.changes, lambda: True))
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert not m.slot_queue and m.snapshot().queued == 0
        serving = True
        back = asyncio.ensure_future(
            request_slots.wait_for_slot(m, None, m.changes, lambda: serving))
        await asyncio.sleep(0)
        serving = False
        m.changes.notify()  # e.g. the model was evicted or crashed
        assert await back is False and not m.slot_queue

    asyncio.run(scenario())
