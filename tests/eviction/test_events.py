"""``GET lemonade/api/v1/events`` (SSE) details: resuming, ids from an earlier run, bad ids,
and that a closed stream unsubscribes. The eviction event itself is in test_pressure.py."""

from __future__ import annotations

import httpx

from tests.helpers.http import sse_events
from tests.helpers.polling import wait_for


def first_events(lemon, n: int, **kwargs) -> list[dict]:
    with lemon.http.stream("GET", "api/v1/events", **kwargs) as resp:
        assert resp.status_code == 200, resp.read()
        stream = sse_events(resp)
        return [next(stream) for _ in range(n)]


def test_resume_and_an_id_from_an_earlier_run(lemon):
    for threshold in (0.5, 0.6, 0.7):
        lemon.set(auto_evict_threshold_pct=threshold)
    history = first_events(lemon, 3)
    assert [e["id"] for e in history] == [1, 2, 3]
    assert [e["data"]["detail"]["keys"] for e in history] == [["auto_evict_threshold_pct"]] * 3

    assert first_events(lemon, 1, headers={"Last-Event-ID": "2"}) == history[2:]
    assert first_events(lemon, 1, params={"last_event_id": "1"}) == history[1:2]

    # The client last saw id 500 from a server run before a restart (ids start again at 1):
    # it gets the recent history rather than nothing until id 501.
    assert first_events(lemon, 3, headers={"Last-Event-ID": "500"}) == history

    # Up to date: the next event it gets is a new one.
    with lemon.http.stream("GET", "api/v1/events", headers={"Last-Event-ID": "3"}) as resp:
        stream = sse_events(resp)
        lemon.set(auto_evict=True)
        live = next(stream)
    assert live["id"] == 4 and live["event"] == "config"
    assert live["data"]["detail"]["keys"] == ["auto_evict"]


def test_a_bad_last_event_id_is_a_400(lemon):
    resp = lemon.get("api/v1/events", headers={"Last-Event-ID": "abc"})
    assert resp.status_code == 400
    assert resp.json()["error"]["type"] == "invalid_request_error"


def test_a_closed_stream_unsubscribes(lemon):
    events = lemon.router.events
    with lemon.http.stream("GET", "api/v1/events", timeout=httpx.Timeout(30.0)) as resp:
        assert resp.status_code == 200
        lines = resp.iter_lines()  # kept: dropping the iterator would close the stream
        assert next(lines) == ": lemonade events"
        wait_for(lambda: events.subscriber_count == 1, what="the subscription")
    wait_for(lambda: events.subscriber_count == 0, what="the stream to unsubscribe")
    assert lemon.health()["status"] == "ok"
