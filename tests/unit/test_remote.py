"""Remote models without a network: the checks of a remote ``/pull``, the persisted form (no
key), the replica choice (fewest in flight among those that answer), and the back-off."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from lemonade_jupyter.core.events import EventLog
from lemonade_jupyter.core.remote import FIRST_BACKOFF_S, RemoteRegistry, backoff_s
from lemonade_jupyter.core.remote_spec import RemoteSpec, ReplicaSpec, parse_remote_pull
from lemonade_jupyter.core.settings import RouterSettings
from lemonade_jupyter.errors import InvalidRequestError


@pytest.fixture
def keys(monkeypatch):
    monkeypatch.setenv("LEMONADE_REMOTE_KEY_A", "sk-a-secret")
    monkeypatch.setenv("LEMONADE_REMOTE_KEY_B", "sk-b-secret")


def test_a_pull_with_one_key_per_replica(keys):
    pull = parse_remote_pull({
        "model_name": "user.vllm", "recipe": "remote", "upstream_model": "meta-llama/Llama-3",
        "base_urls": ["https://a.example/v1/", "http://10.0.0.2:8000/v1"],
        "api_key_env": ["LEMONADE_REMOTE_KEY_A", None], "labels": ["llm", "remote"]})
    assert pull.replicas == (ReplicaSpec("https://a.example/v1", "LEMONADE_REMOTE_KEY_A"),
                             ReplicaSpec("http://10.0.0.2:8000/v1", None))
    assert pull.replicas[0].auth_headers() == {"Authorization": "Bearer sk-a-secret"}
    assert pull.replicas[1].auth_headers() == {}
    spec = pull.spec("meta-llama/Llama-3")
    assert spec.name == "user.vllm" and spec.type == "llm"
    listed = pull.spec("org/m", listed=True)
    assert listed.name == "user.vllm/org/m" and listed.group == "user.vllm"


@pytest.mark.parametrize("change, param", [
    ({"base_url": "ftp://a.example/v1"}, "base_url"),
    ({"base_url": "http:///v1"}, "base_url"),
    ({"base_url": "http://a.example:port/v1"}, "base_url"),
    ({"base_url": "https://a.example/v1?key=x"}, "base_url"),
    ({"base_urls": ["http://a/v1"]}, "base_url"),  # both given
    ({"api_key_env": "sk-looks-like-a-key!"}, "api_key_env"),
    ({"api_key_env": "LEMONADE_REMOTE_KEY_UNSET"}, "api_key_env"),
    ({"labels": "llm"}, "labels"),
    ({"stream": True}, "stream"),
])
def test_bad_pulls(keys, monkeypatch, change, param):
    monkeypatch.delenv("LEMONADE_REMOTE_KEY_UNSET", raising=False)
    body = {"model_name": "user.x", "recipe": "remote", "base_url": "http://a.example/v1",
            "api_key_env": "LEMONADE_REMOTE_KEY_A", **change}
    with pytest.raises(InvalidRequestError) as info:
        parse_remote_pull(body)
    assert info.value.param == param
    assert "sk-looks-like-a-key!" not in info.value.message


def test_the_persisted_form_names_the_variable_never_the_key(keys, tmp_path):
    spec = RemoteSpec("user.v", "m", (ReplicaSpec("http://a/v1", "LEMONADE_REMOTE_KEY_A"),))
    text = json.dumps(spec.to_json())
    assert "LEMONADE_REMOTE_KEY_A" in text and "sk-a-secret" not in text
    assert RemoteSpec.from_json(json.loads(text)) == spec
    assert RemoteSpec.from_json({"model_name": "user.v", "upstream_model": "m",
                                 "replicas": [{"base_url": "file:///etc/passwd"}]}) is None
    assert RemoteSpec.from_json(["junk"]) is None


def _registry(tmp_path, spec: RemoteSpec) -> tuple[RemoteRegistry, EventLog]:
    (tmp_path / "remote_models.json").write_text(json.dumps([spec.to_json()]))
    events = EventLog()
    settings = RouterSettings(remote_probe_interval_s=10.0, remote_probe_backoff_max_s=4.0)
    return RemoteRegistry(tmp_path, events, lambda: settings), events


def test_the_replica_with_fewest_requests_in_flight_among_those_up_goes_first(tmp_path):
    urls = ("http://a/v1", "http://b/v1", "http://c/v1")
    registry, _events = _registry(tmp_path, RemoteSpec(
        "user.v", "m", tuple(ReplicaSpec(u) for u in urls)))
    a, b, c = registry.require("user.v").replicas
    for r in (a, b, c):
        registry.finished(r, "user.v", "ok")  # all answered once: up
    registry.started(a)
    registry.started(a)
    registry.started(b)
    assert registry.choose("user.v") is c
    registry.started(c)
    registry.started(c)
    assert registry.choose("user.v") is b
    registry.failed(b, "refused")
    assert registry.choose("user.v") is a  # b is down: after every replica that answers
    assert registry.choose("user.v", tried=[a, c]) is b  # a down replica is the last resort
    assert registry.choose("user.v", tried=[a, b, c]) is None


def test_equally_busy_replicas_take_turns(tmp_path):
    registry, _ = _registry(tmp_path, RemoteSpec(
        "user.v", "m", (ReplicaSpec("http://a/v1"), ReplicaSpec("http://b/v1"))))
    for r in registry.require("user.v").replicas:
        registry.finished(r, "user.v", "ok")  # both answered: up
    order = []
    for _ in range(4):
        r = registry.choose("user.v")
        registry.started(r)
        registry.finished(r, "user.v", "ok")
        order.append(r.url)
    assert order == ["http://a/v1", "http://b/v1"] * 2


def test_a_down_replica_backs_off_doubling_to_the_cap_and_changes_are_events(tmp_path,
                                                                             monkeypatch):
    registry, events = _registry(tmp_path, RemoteSpec("user.v", "m",
                                                      (ReplicaSpec("http://a/v1"),)))
    clock = SimpleNamespace(now=1000.0)
    monkeypatch.setattr("lemonade_jupyter.core.remote.time.monotonic", lambda: clock.now)
    (replica,) = registry.require("user.v").replicas
    delays = []
    for _ in range(5):
        registry.failed(replica, "refused")
        delays.append(replica.next_probe - clock.now)
    assert delays == [FIRST_BACKOFF_S, 1.0, 2.0, 4.0, 4.0]
    registry.finished(replica, "user.v", "ok")
    assert replica.up is True and replica.next_probe - clock.now == 10.0
    kinds = [(e.kind, e.detail["model_status"]) for e in events if e.kind != "remote"]
    assert kinds == [("unreachable", "unreachable"), ("reachable", "ready")]


def test_the_back_off_stays_capped_after_thousands_of_failures(tmp_path, monkeypatch):
    """A day-long outage: the doubling once overflowed a float after about 1,025 failures."""
    registry, _ = _registry(tmp_path, RemoteSpec("user.v", "m", (ReplicaSpec("http://a/v1"),)))
    clock = SimpleNamespace(now=1000.0)
    monkeypatch.setattr("lemonade_jupyter.core.remote.time.monotonic", lambda: clock.now)
    (replica,) = registry.require("user.v").replicas
    for _ in range(2000):
        registry.failed(replica, "refused")
        clock.now += 1.0
    assert replica.failures == 2000
    assert replica.next_probe - (clock.now - 1.0) == 4.0  # remote_probe_backoff_max_s
    assert registry.choose("user.v") is replica  # still chosen as the last resort
    assert backoff_s(10**9, 30.0) == 30.0 and backoff_s(1, 30.0) == FIRST_BACKOFF_S
