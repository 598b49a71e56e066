"""Request statistics from the last bytes of an answer: the engine's ``timings`` found in a
plain answer's end or a stream's last events, named as lemonade's stats endpoint names them."""

from __future__ import annotations

import json

from lemonade_jupyter.core import usage
from lemonade_jupyter.core.events import EventLog, acting_user
from lemonade_jupyter.core.live_model import RouterSnapshot
from lemonade_jupyter.core.metrics import RouterMetrics
from lemonade_jupyter.core.request_stats import RequestStats, parse_timings
from lemonade_jupyter.core.usage import NO_USER

TIMINGS = {"cache_n": 24, "prompt_n": 7, "prompt_ms": 100.5, "prompt_per_token_ms": 14.3,
           "prompt_per_second": 69.9, "predicted_n": 4, "predicted_ms": 62.1,
           "predicted_per_token_ms": 20.7, "predicted_per_second": 48.25}


def stream_tail(timings: dict) -> bytes:
    last = {"choices": [{"finish_reason": "length", "index": 0, "delta": {}}],
            "model": "m", "timings": timings}
    early = {"choices": [{"delta": {"content": '"timings":{"prompt_ms":1}'}}]}  # in a string
    return (b"data: " + json.dumps(early, separators=(",", ":")).encode() + b"\n\n"
            + b"data: " + json.dumps(last, separators=(",", ":")).encode() + b"\n\n"
            + b"data: [DONE]\n\n")


def test_record_reads_the_last_timings_of_a_stream():
    stats = RequestStats()
    heard = []
    stats.add_listener(heard.append)
    rec = stats.record("user.m", "/v1/chat/completions", stream_tail(TIMINGS))
    assert rec is not None and stats.last is rec and heard == [rec]
    assert rec.to_json() | {"finished_at": 0} == {
        "model": "user.m", "route": "/v1/chat/completions", "time_to_first_token": 0.1005,
        "tokens_per_second": 48.25, "input_tokens": 7, "cached_tokens": 24,
        "prompt_tokens": 31, "output_tokens": 4, "finished_at": 0, "user": "(none)",
    }


def test_plain_answer_and_answers_without_timings():
    stats = RequestStats()
    body = json.dumps({"choices": [], "usage": {}, "timings": TIMINGS}).encode()
    assert parse_timings(body) == TIMINGS
    first = stats.record("user.m", "/v1/completions", body)
    # An answer that carries none (an error, Anthropic's stream) keeps the last record.
    assert stats.record("user.m", "/v1/messages", b'data: {"type":"message_stop"}\n\n') is None
    assert stats.record("user.m", "/v1/chat/completions", b'{"timings":{"prompt_n":') is None
    assert stats.last is first


def test_histograms_per_model_follow_the_records():
    stats = RequestStats()
    metrics = RouterMetrics(EventLog(), lambda: RouterSnapshot((), ("llm",), None), stats)
    stats.record("user.a", "/v1/chat/completions", stream_tail(TIMINGS))
    stats.record("user.a", "/v1/chat/completions", stream_tail({**TIMINGS, "predicted_n": 0}))
    text = metrics.render().decode()
    assert 'lemonade_time_to_first_token_seconds_count{model="user.a"} 2.0' in text
    # No token generated: no decoding speed to observe.
    assert 'lemonade_tokens_per_second_count{model="user.a"} 1.0' in text
    assert 'lemonade_tokens_per_second_sum{model="user.a"} 48.25' in text


def _record_as(stats: RequestStats, user: str | None, timings: dict) -> None:
    token = acting_user.set(user)
    try:
        stats.record("user.a", "/v1/chat/completions", stream_tail(timings))
    finally:
        acting_user.reset(token)


def test_usage_per_user_adds_up_to_the_totals_in_stats_and_metrics():
    stats = RequestStats()
    metrics = RouterMetrics(EventLog(), lambda: RouterSnapshot((), ("llm",), None), stats)
    _record_as(stats, "alice", TIMINGS)
    _record_as(stats, "alice", {**TIMINGS, "predicted_n": 9})
    _record_as(stats, "bob", TIMINGS)
    _record_as(stats, None, TIMINGS)
    users = stats.usage.to_json()
    assert users["alice"]["requests"] == 2 and users["alice"]["completion_tokens"] == 4 + 9
    assert users["bob"]["prompt_tokens"] == 31 and users[NO_USER]["requests"] == 1
    totals = stats.usage.totals.to_json()
    for key in ("requests", "prompt_tokens", "completion_tokens"):
        assert sum(row[key] for row in users.values()) == totals[key], key
    assert totals["requests"] == 4 and stats.last is not None and stats.last.user == NO_USER
    text = metrics.render().decode()
    assert 'lemonade_user_requests_total{user="alice"} 2.0' in text
    assert 'lemonade_user_completion_tokens_total{user="alice"} 13.0' in text
    assert 'lemonade_user_prompt_tokens_total{user="bob"} 31.0' in text
    assert 'lemonade_user_time_to_first_token_seconds_count{user="bob"} 1.0' in text


def test_usage_rows_are_bounded(monkeypatch):
    monkeypatch.setattr(usage, "MAX_USERS", 2)
    ledger = usage.UsageLedger()
    rows = [ledger.add(f"u{i}", 1, 1, 0.1) for i in range(4)]
    assert rows == ["u0", "u1", usage.OTHER_USERS, usage.OTHER_USERS]
    assert ledger.add("u0", 1, 1, 0.1) == "u0"  # a known user keeps its row
    assert ledger.to_json()[usage.OTHER_USERS]["requests"] == 2
