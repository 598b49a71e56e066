"""The bounded wait for a model's parallel slots: first come first served, a full queue
refused at once with 429, a cancelled wait leaves the queue, a model that stops serving
sends its waiters back to the router.

The model table is the one writer of the slot counts and the queue; these tests drive it
through the router with in-memory backends (no process: the rules only read what a backend
reports, here its slot count)."""

from __future__ import annotations

import asyncio

import pytest

from lemonade_jupyter.core import request_slots
from lemonade_jupyter.core.catalog import ModelSpec
from lemonade_jupyter.core.live_model import LiveModel
from lemonade_jupyter.core.options import LoadOptions
from lemonade_jupyter.core.preferences import ModelPreferences
from lemonade_jupyter.core.settings import RouterSettings
from lemonade_jupyter.errors import QueueFullError
from tests.fakes.memory_launcher import MemoryLauncher, memory_catalog, memory_router
from tests.helpers.polling import wait_until

NAME = "user.m"


def model(parallel: int | None = 1, max_queue: int | None = None) -> LiveModel:
    prefs = ModelPreferences()
    prefs.set_options(NAME, LoadOptions(parallel=parallel, max_queue=max_queue))
    return LiveModel(spec=ModelSpec(name=NAME, checkpoint="/m.gguf"), preferences=prefs)


def test_bound_comes_from_the_option_else_the_setting():
    assert request_slots.queue_bound(model(), RouterSettings()) is None  # -1: no bound
    assert request_slots.queue_bound(model(), RouterSettings(max_queue=3)) == 3
    assert request_slots.queue_bound(model(max_queue=0), RouterSettings(max_queue=3)) == 0
    assert request_slots.queue_bound(model(max_queue=-1), RouterSettings(max_queue=3)) is None


async def test_unknown_slot_count_never_waits(tmp_path):
    launcher = MemoryLauncher()  # its backends report no slot count, and no option sets one
    async with memory_router(memory_catalog(tmp_path, [NAME]), launcher, tmp_path) as router:
        leases = [await router.acquire(NAME) for _ in range(50)]
        m = router.get_live(NAME)
        assert m is not None and m.busy_slots == 50 and m.in_flight == 50
        for lease in leases:
            router.release(lease)
        assert m.busy_slots == 0 and m.in_flight == 0


async def test_waiters_take_the_slot_in_arrival_order_and_a_full_queue_is_refused(tmp_path):
    launcher = MemoryLauncher()
    launcher.total_slots[NAME] = 1
    async with memory_router(memory_catalog(tmp_path, [NAME]), launcher, tmp_path,
                             max_queue=2) as router:
        busy = await router.acquire(NAME)  # the one slot is busy
        m = busy.model
        assert not request_slots.has_free_slot(m)
        order: list[int] = []

        async def wait(i: int):
            lease = await router.acquire(NAME)
            order.append(i)
            return lease

        first = asyncio.ensure_future(wait(1))
        await wait_until(lambda: len(m.slot_queue) == 1, 5, "the first waiter queued")
        second = asyncio.ensure_future(wait(2))
        await wait_until(lambda: len(m.slot_queue) == 2, 5, "the second waiter queued")
        assert m.snapshot().queued == 2 and m.is_busy
        with pytest.raises(QueueFullError) as info:
            await router.acquire(NAME)
        assert info.value.status_code == 429 and info.value.headers() == {"Retry-After": "1"}
        router.release(busy)
        one = await asyncio.wait_for(first, 10)
        assert order == [1] and not second.done()  # one slot: the second still waits
        router.release(one)
        two = await asyncio.wait_for(second, 10)
        assert order == [1, 2] and not m.slot_queue and m.busy_slots == 1
        router.release(two)


async def test_a_new_request_does_not_overtake_those_waiting(tmp_path):
    launcher = MemoryLauncher()
    launcher.total_slots[NAME] = 1
    async with memory_router(memory_catalog(tmp_path, [NAME]), launcher, tmp_path) as router:
        busy = await router.acquire(NAME)
        m = busy.model
        waiter = asyncio.ensure_future(router.acquire(NAME))
        await wait_until(lambda: len(m.slot_queue) == 1, 5, "the waiter queued")
        router.release(busy)
        # A slot is free, but someone waits for it: a newcomer must queue behind.
        assert not request_slots.has_free_slot(m)
        router.release(await asyncio.wait_for(waiter, 10))


async def test_cancelled_wait_leaves_the_queue_and_stopped_model_sends_waiters_back(tmp_path):
    launcher = MemoryLauncher()
    launcher.total_slots[NAME] = 1
    async with memory_router(memory_catalog(tmp_path, [NAME]), launcher, tmp_path) as router:
        busy = await router.acquire(NAME)
        m = busy.model
        waiter = asyncio.ensure_future(router.acquire(NAME))
        await wait_until(lambda: len(m.slot_queue) == 1, 5, "the waiter queued")
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert not m.slot_queue and m.snapshot().queued == 0
        back = asyncio.ensure_future(router.acquire(NAME))
        await wait_until(lambda: len(m.slot_queue) == 1, 5, "the waiter queued")
        launcher.backend(NAME).crash()  # the model stops serving: its waiter asks again
        lease = await asyncio.wait_for(back, 10)
        assert not m.slot_queue and lease.model is not m  # served by a fresh load
        assert len(launcher.backends) == 2
        router.release(lease)


async def test_serves_now_is_true_only_where_acquire_would_not_wait(tmp_path):
    """A stream skips its ping machinery when the router says the lease comes at once; that
    must never be said of a model that is absent, loading, full or dead."""
    launcher = MemoryLauncher()
    launcher.total_slots[NAME] = 1
    async with memory_router(memory_catalog(tmp_path, [NAME]), launcher, tmp_path) as router:
        assert not router.serves_now(NAME)  # not loaded: acquiring it loads it
        loading = asyncio.ensure_future(router.load(NAME))
        await asyncio.sleep(0)
        assert not router.serves_now(NAME)  # admitted, still starting
        await loading
        assert router.serves_now(NAME) and router.serves_now(NAME, slot=False)
        busy = await router.acquire(NAME)
        assert not router.serves_now(NAME)  # its one slot is taken: a request would queue
        assert router.serves_now(NAME, slot=False)  # tokenizing needs no slot
        router.release(busy)
        assert router.serves_now(NAME)
        launcher.backend(NAME).crash(-9)
        assert not router.serves_now(NAME, slot=False)  # dead until the supervisor acts
        lease = await asyncio.wait_for(router.acquire(NAME), 10)  # reloaded on the way
        router.release(lease)
        assert router.serves_now(NAME)
