"""Tier 2 under memory pressure: who goes, who stays, with real backends.

Pressure is simulated at 0.95 (over the default threshold 0.90) through
``/internal/simulate-vram-pressure``, which runs one evaluation synchronously and answers with
what it committed.
"""

from __future__ import annotations

import threading
import time

import httpx

from lemonade_jupyter.core import eviction

from tests.helpers.http import sse_events
from tests.helpers.polling import wait_for
from tests.helpers.processes import alive

from .conftest import DEADLINE_S, join, run_in_thread


def score(entry: dict) -> float:
    """``idle_ms / (load_duration_ms × evict_weight_factor)`` from a /health entry."""
    weight = entry["recipe_options"].get("evict_weight_factor", 1.0)
    return entry["idle_s"] * 1000.0 / (max(entry["load_duration_ms"], 1.0) * weight)


def wait_idle(lemon, name: str, seconds: float) -> None:
    wait_for(lambda: lemon.model(name)["idle_s"] >= seconds, what=f"{name} idle {seconds} s")


def test_pressure_evicts_the_highest_score_and_leaves_the_pinned_one(lemon):
    # m1 is pinned and by far the best victim if pins did not count: the idlest, and a weight
    # of 0.001 multiplies its score by 1000.
    lemon.load("user.m1", pinned=True, evict_weight_factor=0.001)
    lemon.load("user.m2")
    lemon.load("user.m3")
    lemon.set(auto_evict=True)
    wait_idle(lemon, "user.m2", 1.0)
    # m3 is used right before the evaluation, so it is far less idle than m2. Loads on a busy
    # machine can take 0.4 s or 8 s, which also weighs in: the expected victim is the one with
    # the higher score on /health, once the two are clearly apart.
    for _ in range(5):
        lemon.chat("user.m3")
        before = lemon.models()
        scores = {name: score(m) for name, m in before.items()}
        low, high = sorted(scores[n] for n in ("user.m2", "user.m3"))
        if high > 1.5 * low:
            break
    victim = max(("user.m2", "user.m3"), key=scores.__getitem__)
    other = ({"user.m2", "user.m3"} - {victim}).pop()
    assert scores["user.m1"] > scores[victim] > scores[other], scores

    actions = lemon.simulate(0.95)

    assert [(a["model"], a["action"], a["reason"]) for a in actions] == [
        (victim, "evict", "pressure")
    ]
    assert actions[0]["score"] >= scores[victim] * 0.9
    after = lemon.models()
    assert set(after) == {"user.m1", other}
    assert after["user.m1"]["status"] == "ready" and after["user.m1"]["pinned"] is True
    assert after["user.m1"]["pid"] == before["user.m1"]["pid"]
    assert after[other]["pid"] == before[other]["pid"]
    wait_for(lambda: not alive(before[victim]["pid"]), what="the victim's process to end")
    [event] = lemon.events("evict", victim)
    assert event.reason == "pressure"
    assert event.memory_before is not None and event.memory_before > 0
    assert event.memory_after == 0

    # One decision per evaluation: the next one takes the other; the pinned model is never taken.
    assert [a["model"] for a in lemon.simulate(0.95)] == [other]
    assert lemon.simulate(0.95) == []
    assert set(lemon.models()) == {"user.m1"}


def test_a_large_evict_weight_factor_protects_a_model(lemon):
    lemon.load("user.m2", evict_weight_factor=1000.0)
    lemon.load("user.m3")
    lemon.set(auto_evict=True)
    wait_idle(lemon, "user.m3", 0.3)
    before = lemon.models()
    # Without its weight m2 (loaded first, idler) would be the victim.
    assert before["user.m2"]["idle_s"] > before["user.m3"]["idle_s"]
    assert score(before["user.m3"]) > score(before["user.m2"])

    actions = lemon.simulate(0.95)

    assert [(a["model"], a["reason"]) for a in actions] == [("user.m3", "pressure")]
    assert set(lemon.models()) == {"user.m2"}


def test_only_opted_in_models_over_the_threshold_are_evicted(lemon):
    lemon.load("user.m1")
    lemon.load("user.m2", auto_evict=True)  # per-model opt-in, without the global switch
    assert lemon.get("internal/config").json()["auto_evict"] is False
    assert lemon.simulate(0.89) == []  # below the default threshold 0.90
    assert [a["model"] for a in lemon.simulate(1.0)] == ["user.m2"]
    assert lemon.simulate(1.0) == []  # m1 did not opt in
    assert set(lemon.models()) == {"user.m1"}

    lemon.set(auto_evict=True, auto_evict_threshold_pct=0.5)
    lemon.load("user.m1", auto_evict=False)  # per-model opt-out beats the global switch
    assert lemon.simulate(1.0) == []
    lemon.load("user.m1", auto_evict=None)  # back to the global default
    assert lemon.simulate(0.49) == []
    assert [a["model"] for a in lemon.simulate(0.5)] == ["user.m1"]  # at the threshold


def test_a_busy_model_is_skipped(lemon):
    """A streaming request in flight keeps its model loaded under pressure."""
    lemon.load("user.m1")
    lemon.set(auto_evict=True)
    pid = lemon.model("user.m1")["pid"]
    first_chunk = threading.Event()
    stop = threading.Event()

    def stream() -> int:
        body = {"model": "user.m1", "stream": True, "max_tokens": 1500, "ignore_eos": True,
                "messages": [{"role": "user", "content": "Count to a thousand."}]}
        chunks = 0
        with lemon.http.stream("POST", "api/v1/chat/completions", json=body) as resp:
            assert resp.status_code == 200
            for line in resp.iter_lines():
                if line.startswith("data: {"):
                    chunks += 1
                    first_chunk.set()
                if stop.is_set():
                    break  # closing the stream mid-way ends the request
        return chunks

    thread, out = run_in_thread(stream)
    assert first_chunk.wait(DEADLINE_S), out
    assert lemon.model("user.m1")["is_busy"] is True

    assert lemon.simulate(0.95) == []
    entry = lemon.model("user.m1")
    assert entry["pid"] == pid and entry["status"] == "in_use"
    assert lemon.events("evict") == []

    stop.set()
    assert join(thread, out) >= 1
    wait_for(lambda: lemon.model("user.m1")["is_busy"] is False, what="the lease released")
    assert [a["model"] for a in lemon.simulate(0.95)] == ["user.m1"]


def test_a_request_during_a_pending_eviction_rescues_the_model(lemon, monkeypatch):
    """The engine decides, waits ``eviction_grace_s``, then commits what nobody used meanwhile."""
    lemon.load("user.m1")
    lemon.set(auto_evict=True, eviction_grace_s=1.5)
    pid = lemon.model("user.m1")["pid"]
    planned = threading.Event()
    plan = eviction.plan

    def spy(*args, **kwargs):
        decisions = plan(*args, **kwargs)
        if decisions:
            planned.set()
        return decisions

    # observe the moment the decision is made (it runs on the server thread)
    monkeypatch.setattr(eviction, "plan", spy)
    started = time.monotonic()
    thread, out = run_in_thread(lambda: lemon.simulate(0.95))
    assert planned.wait(DEADLINE_S)
    reply = lemon.chat("user.m1")  # inside the grace period
    answered = time.monotonic()
    actions = join(thread, out)
    finished = time.monotonic()

    assert reply["choices"][0]["message"]["content"] is not None
    assert answered < finished and finished - started >= 1.5
    assert actions == []
    entry = lemon.model("user.m1")
    assert entry["pid"] == pid and entry["status"] == "ready"
    assert lemon.events("evict") == []

    # Nobody comes this time: the same decision commits after the grace.
    assert [a["model"] for a in lemon.simulate(0.95)] == ["user.m1"]
    assert lemon.model("user.m1") is None


def test_the_event_stream_delivers_the_eviction_and_metrics_count_it(lemon):
    lemon.load("user.m1")
    lemon.load("user.m2", pinned=True)
    lemon.set(auto_evict=True)
    with lemon.http.stream("GET", "api/v1/events",
                           timeout=httpx.Timeout(60.0)) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        stream = sse_events(resp)
        history = []
        # The history comes first: both loads, the pin and the config change.
        while not any(e["event"] == "config" for e in history):
            history.append(next(stream))
        assert [e["data"]["model"] for e in history if e["event"] == "load"] == [
            "user.m1", "user.m2"]
        assert [e["id"] for e in history] == sorted(e["id"] for e in history)

        assert [a["model"] for a in lemon.simulate(0.95)] == ["user.m1"]
        live = next(e for e in stream if e["event"] == "evict")
    assert live["data"]["model"] == "user.m1"
    assert live["data"]["reason"] == "pressure"
    assert live["data"]["memory_before"] > 0 and live["data"]["memory_after"] == 0
    assert live["id"] > history[-1]["id"]

    # Last-Event-ID resumes right after the given id: nothing before it, nothing twice.
    resume_from = history[-1]["id"]
    with lemon.http.stream("GET", "api/v1/events",
                           headers={"Last-Event-ID": str(resume_from)}) as resp:
        resumed = next(sse_events(resp))
    assert resumed["id"] == resume_from + 1
    assert resumed == live
    with lemon.http.stream("GET", "api/v1/events",
                           params={"last_event_id": live["id"] - 1}) as resp:
        assert next(sse_events(resp)) == live

    text = lemon.metrics()
    assert 'lemonade_evictions_total{reason="pressure"} 1.0' in text
    assert 'lemonade_loaded_models{type="llm"} 1.0' in text
    assert 'lemonade_pinned_models{type="llm"} 1.0' in text
    assert 'lemonade_model_memory_bytes{model="user.m2"}' in text
    assert 'lemonade_model_memory_bytes{model="user.m1"}' not in text
    assert "lemonade_load_duration_seconds_count 2.0" in text
