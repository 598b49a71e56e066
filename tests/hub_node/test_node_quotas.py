"""Quotas per user, one memory ledger for everyone, and usage per user, on the node router
through a real JupyterHub and its proxy, with the users' own Hub tokens.

A pin over a user's quota (pins, pinned memory) answers 409 ``quota_exceeded`` with the
figures and changes nothing; a request over a user's quota of requests in flight answers 429
with ``Retry-After`` while other users go on; a load that does not fit next to another user's
pinned model is refused naming the memory; ``/stats`` and ``/metrics`` count each user's
requests, and the rows add up to the totals.
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import socket
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from lemonade_jupyter.core.catalog import DEFAULT_MODEL
from lemonade_jupyter.core.settings import SETTINGS_BY_NAME

from tests.fakes.fake_openai_upstream import FakeUpstream
from tests.helpers.http import API, loaded
from tests.helpers.polling import wait_for
from tests.hub_node.hub import HubNode

A = DEFAULT_MODEL
MIB = 1024 * 1024
QUOTAS = ("node_max_pins_per_user", "node_max_pinned_mib_per_user",
          "node_max_requests_per_user", "memory_budget_mib")


@pytest.fixture
def quotas(node: HubNode) -> Iterator[HubNode]:
    """The node, with the quotas and the memory budget back to their defaults afterwards
    (they are persisted, and the Hub runs for the whole folder)."""
    yield node
    defaults = {name: SETTINGS_BY_NAME[name].default for name in QUOTAS}
    _set(node, **defaults)


def _set(node: HubNode, **values: Any) -> None:
    with node.client("admin") as http:
        resp = http.post("lemonade/internal/set", json=values)
    assert resp.status_code == 200, resp.text


def _post(node: HubNode, user: str, path: str, body: dict[str, Any]) -> httpx.Response:
    with node.client(user) as http:
        return http.post(path, json=body)


def _health(node: HubNode) -> dict[str, Any]:
    with node.client("admin") as http:
        resp = http.get(f"{API}/health")
    assert resp.status_code == 200, resp.text
    return resp.json()  # type: ignore[no-any-return]


def _over_quota(resp: httpx.Response, quota: str, status: int = 409) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert error["code"] == "quota_exceeded" and error["quota"] == quota, error
    return error  # type: ignore[no-any-return]


def test_node_pin_quota_answers_409_with_the_figures_and_changes_nothing(quotas):
    node = quotas
    _set(node, node_max_pins_per_user=1)
    assert _post(node, "alice", f"{API}/load", {"model_name": A, "pinned": True}).status_code \
        == 200

    error = _over_quota(_post(node, "alice", f"{API}/load",
                              {"model_name": "user.b", "pinned": True}), "pins_per_user")
    assert (error["limit"], error["used"], error["requested"]) == (1, 1, 1)
    assert "user.b" not in loaded(_health(node))

    assert _post(node, "alice", f"{API}/load", {"model_name": "user.b"}).status_code == 200
    error = _over_quota(_post(node, "alice", "lemonade/internal/pin",
                              {"model_name": "user.b", "pinned": True}), "pins_per_user")
    assert (error["limit"], error["used"], error["requested"]) == (1, 1, 1)
    assert loaded(_health(node))["user.b"]["pinned"] is False

    # The quota is each user's: bob pins his own model (alice's unpinned one makes room).
    resp = _post(node, "bob", f"{API}/load", {"model_name": "user.c", "pinned": True})
    assert resp.status_code == 200, resp.text
    models = loaded(_health(node))
    assert models["user.c"]["pinned"] and models[A]["pinned"] and models[A]["owner"] == "alice"


def test_node_pinned_memory_quota_answers_409_with_the_figures(quotas, default_model_file):
    node = quotas
    size_mib = math.ceil(os.path.getsize(default_model_file) / MIB)
    _set(node, node_max_pinned_mib_per_user=size_mib - 1)

    error = _over_quota(_post(node, "alice", f"{API}/load", {"model_name": A, "pinned": True}),
                        "pinned_mib_per_user")
    assert (error["limit"], error["used"], error["requested"]) == (size_mib - 1, 0, size_mib)
    assert A not in loaded(_health(node))

    # Room for one: the second pin counts what the first holds.
    _set(node, node_max_pinned_mib_per_user=size_mib)
    assert _post(node, "alice", f"{API}/load", {"model_name": A, "pinned": True}).status_code \
        == 200
    assert _post(node, "alice", f"{API}/load", {"model_name": "user.b"}).status_code == 200
    error = _over_quota(_post(node, "alice", "lemonade/internal/pin",
                              {"model_name": "user.b", "pinned": True}), "pinned_mib_per_user")
    assert error["limit"] == size_mib and error["used"] > 0 and error["requested"] > 0
    assert loaded(_health(node))["user.b"]["pinned"] is False


def test_node_a_fit_refusal_counts_every_users_models(quotas):
    node = quotas
    _set(node, memory_budget_mib=1_000_000)  # a budget: the router estimates every load
    assert _post(node, "alice", f"{API}/load", {"model_name": A, "pinned": True}).status_code \
        == 200
    held = loaded(_health(node))[A]
    alice_bytes = held["memory_bytes"] or held["estimate_bytes"]
    # Bob's model is the same file: it fits alone, but not beside alice's pinned one.
    budget = (alice_bytes + held["estimate_bytes"]) // MIB - 1
    assert budget * MIB >= held["estimate_bytes"]
    _set(node, memory_budget_mib=budget)

    resp = _post(node, "bob", f"{API}/load", {"model_name": "user.b"})
    assert resp.status_code == 409, resp.text
    error = resp.json()["error"]
    assert error["code"] == "insufficient_memory" and "memory_budget_mib" in error["message"]
    assert error["pinned_bytes"] >= alice_bytes
    models = loaded(_health(node))
    assert "user.b" not in models and models[A]["pinned"] and models[A]["owner"] == "alice"


# -- requests in flight ------------------------------------------------------------------------
class _Upstream:
    """The fake OpenAI upstream on a loop of its own thread (the Hub tests are synchronous)."""

    def __init__(self, slow_s: float) -> None:
        self.fake = FakeUpstream(slow_s=slow_s, host_name="localhost")
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> FakeUpstream:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.fake.start(), self.loop).result(30)
        return self.fake

    def __exit__(self, *exc: Any) -> None:
        asyncio.run_coroutine_threadsafe(self.fake.stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        self.loop.close()


def _open_chat(node: HubNode, user: str, model: str) -> socket.socket:
    """Send a chat request through the Hub's proxy and leave it open (no answer read)."""
    body = b'{"model": "%s", "messages": [{"role": "user", "content": "hi"}]}' % model.encode()
    sock = socket.create_connection(("127.0.0.1", node.proxy_port), timeout=30)
    sock.sendall(
        b"POST /services/lemonade/lemonade/api/v1/chat/completions HTTP/1.1\r\n"
        b"Host: 127.0.0.1\r\nContent-Type: application/json\r\n"
        + f"Authorization: token {node.tokens[user]}\r\n".encode()
        + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    return sock


def _chat(node: HubNode, user: str, model: str) -> httpx.Response:
    return _post(node, user, f"{API}/chat/completions",
                 {"model": model, "messages": [{"role": "user", "content": "hi there"}]})


def test_node_requests_in_flight_beyond_a_users_quota_get_429_with_retry_after(quotas):
    node = quotas
    with _Upstream(slow_s=10) as upstream:  # named localhost: the node allows that host
        resp = _post(node, "admin", f"{API}/pull", {
            "model_name": "user.slow", "recipe": "remote", "base_url": upstream.base_url,
            "upstream_model": "slow"})
        assert resp.status_code == 200, resp.text
        try:
            _set(node, node_max_requests_per_user=1)
            held = _open_chat(node, "alice", "user.slow")
            try:
                # Alice's next request is refused once the first is in flight (an unknown
                # model: had it been let through, it would be a quick 404).
                refused = wait_for(
                    lambda: (r := _chat(node, "alice", "user.none")).status_code == 429 and r,
                    30, what="alice's request to be refused while her first is in flight")
                assert refused.headers["Retry-After"] == "1"
                error = _over_quota(refused, "requests_in_flight", status=429)
                assert (error["limit"], error["used"], error["requested"]) == (1, 1, 1)
                # Bob is not held up by alice's request.
                assert _chat(node, "bob", A).status_code == 200
            finally:
                held.close()
            # Her request over (the router is done with it once the slow replica answers,
            # however soon the client hung up), alice gets through again.
            wait_for(lambda: _chat(node, "alice", "user.none").status_code == 404, 60,
                     what="alice's request in flight to be counted no more", interval=0.5)
        finally:
            deleted = _post(node, "admin", f"{API}/delete", {"model_name": "user.slow"})
            assert deleted.status_code == 200, deleted.text


# -- usage per user ----------------------------------------------------------------------------
def _stats(node: HubNode) -> dict[str, Any]:
    with node.client("admin") as http:
        resp = http.get(f"{API}/stats")
    assert resp.status_code == 200, resp.text
    return resp.json()  # type: ignore[no-any-return]


def _metric_sum(text: str, name: str, label: str) -> dict[str, float]:
    """``name``'s samples by the value of ``label``."""
    found: dict[str, float] = {}
    for value_of_label, value in re.findall(
            rf'^{name}\{{[^}}]*{label}="([^"]*)"[^}}]*\}} (\S+)$', text, re.MULTILINE):
        found[value_of_label] = found.get(value_of_label, 0.0) + float(value)
    return found


def test_node_usage_per_user_in_stats_and_metrics_adds_up_to_the_totals(node):
    before = _stats(node)["users"]
    answers = [_chat(node, "alice", A), _chat(node, "alice", A), _chat(node, "bob", A)]
    assert all(r.status_code == 200 for r in answers), [r.text for r in answers]

    stats = _stats(node)
    users, totals = stats["users"], stats["totals"]

    def grew(user: str, key: str) -> int:
        return users[user][key] - before.get(user, {}).get(key, 0)  # type: ignore[no-any-return]

    assert grew("alice", "requests") == 2 and grew("bob", "requests") == 1
    sent = [r.json()["timings"] for r in answers]
    assert grew("alice", "prompt_tokens") == sent[0]["prompt_n"] + sent[1]["prompt_n"]
    assert grew("bob", "completion_tokens") == sent[2]["predicted_n"]
    assert stats["user"] == "bob"
    for key in ("requests", "prompt_tokens", "completion_tokens"):
        assert sum(row[key] for row in users.values()) == totals[key], key

    with node.client("admin") as http:
        metrics = http.get("lemonade/metrics").text
    by_user = _metric_sum(metrics, "lemonade_user_requests_total", "user")
    assert {u: int(v) for u, v in by_user.items()} == {u: r["requests"]
                                                        for u, r in users.items()}
    by_model = _metric_sum(metrics, "lemonade_time_to_first_token_seconds_count", "model")
    assert sum(by_user.values()) == sum(by_model.values()) == totals["requests"]
    tokens = _metric_sum(metrics, "lemonade_user_completion_tokens_total", "user")
    assert sum(tokens.values()) == totals["completion_tokens"]
