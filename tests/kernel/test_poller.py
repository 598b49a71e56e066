"""The dashboard's refresh thread: it ticks on its interval, a wake makes the next tick come at
once, and stop ends the thread (also when a tick itself asks it to stop)."""

from __future__ import annotations

import threading

from lemonade_jupyter.kernel.poller import Poller
from tests.helpers.polling import wait_for


def test_a_wake_makes_the_next_tick_come_at_once_and_stop_ends_the_thread():
    ticks: list[int] = []
    poller = Poller(ticks.append, interval=3600, name="lemonade-test-poller")
    poller.start()
    poller.start()  # idempotent: still one thread
    thread = poller.thread
    assert thread is not None and poller.running
    assert [t.name for t in threading.enumerate()].count("lemonade-test-poller") == 1
    poller.wake()
    wait_for(lambda: ticks == [1], 10, "the tick after a wake")
    poller.wake()
    wait_for(lambda: ticks == [1, 2], 10, "the second tick")
    poller.stop()
    assert not thread.is_alive() and not poller.running and ticks == [1, 2]


def test_ticks_follow_the_interval_and_a_tick_may_stop_its_own_poller():
    ticks: list[int] = []

    def tick(n: int) -> None:
        ticks.append(n)
        if n == 3:
            poller.stop()  # from the poller's own thread: no join on itself

    poller = Poller(tick, interval=0.01, name="lemonade-test-poller")
    poller.start()
    thread = poller.thread
    assert thread is not None
    thread.join(10)
    assert not thread.is_alive() and ticks == [1, 2, 3]
