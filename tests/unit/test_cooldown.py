"""The crash-loop guard: N failures within a window start a doubling, capped cooldown."""

from __future__ import annotations

import types

import pytest

from lemonade_jupyter.core import cooldown
from lemonade_jupyter.core.cooldown import CrashLoopGuard
from lemonade_jupyter.errors import CoolingDownError


@pytest.fixture
def clock(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(cooldown, "time", types.SimpleNamespace(monotonic=lambda: now[0]))
    return now


def retry_after(guard: CrashLoopGuard, name: str) -> int | None:
    try:
        guard.check(name)
    except CoolingDownError as exc:
        return exc.retry_after_s
    return None


def test_threshold_then_doubling_then_cap(clock):
    guard = CrashLoopGuard(threshold=2, base_s=5, cap_s=30)
    guard.failure("m", "boom")
    assert retry_after(guard, "m") is None and not guard.cooling_down("m")
    expected = [5, 10, 20, 30, 30]
    for seconds in expected:
        guard.failure("m", "first line\nlast line")
        assert guard.cooling_down("m")
        assert retry_after(guard, "m") == seconds
    clock[0] += 30.5
    assert retry_after(guard, "m") is None


def test_cooldown_error_carries_retry_after_and_reason(clock):
    guard = CrashLoopGuard(threshold=1, base_s=2.2, cap_s=60)
    guard.failure("m", "a\nerror: bad magic")
    with pytest.raises(CoolingDownError) as info:
        guard.check("m")
    exc = info.value
    assert exc.status_code == 503
    assert exc.retry_after_s == 3  # rounded up, never 0
    assert exc.headers() == {"Retry-After": "3"}
    assert "error: bad magic" in exc.message and "a\n" not in exc.message
    clock[0] += 2.0
    assert retry_after(guard, "m") == 1


def test_success_ends_the_streak_and_models_are_independent(clock):
    guard = CrashLoopGuard(threshold=2, base_s=5, cap_s=60)
    guard.failure("a", "x")
    guard.success("a")
    guard.failure("a", "x")
    assert not guard.cooling_down("a")
    guard.failure("b", "x")
    guard.failure("b", "x")
    assert guard.cooling_down("b") and not guard.cooling_down("a")
    guard.forget("b")
    assert retry_after(guard, "b") is None


def test_failures_count_only_within_the_window(clock):
    guard = CrashLoopGuard(threshold=2, base_s=5, cap_s=60, window_s=30)
    guard.failure("m", "x")
    clock[0] += 31  # the first failure left the window
    guard.failure("m", "x")
    assert not guard.cooling_down("m")
    clock[0] += 10
    guard.failure("m", "x")  # two within 30 s
    assert retry_after(guard, "m") == 5


def test_early_death_counts_a_healthy_one_resets(clock):
    guard = CrashLoopGuard(threshold=2, base_s=5, cap_s=60)
    # killed after it served: not a crash loop, whatever the uptime
    for _ in range(5):
        guard.exited("m", uptime_s=1.0, served=True, reason="code -9")
    assert not guard.cooling_down("m")
    # up long enough without a request: ran fine too
    guard.failure("m", "x")
    guard.exited("m", uptime_s=cooldown.STABLE_UPTIME_S, served=False, reason="code -9")
    guard.failure("m", "x")
    assert not guard.cooling_down("m")
    # died right after its start, twice: a crash loop
    guard.exited("m", uptime_s=0.5, served=False, reason="code -11")
    assert retry_after(guard, "m") == 5
    with pytest.raises(CoolingDownError, match="code -11"):
        guard.check("m")
