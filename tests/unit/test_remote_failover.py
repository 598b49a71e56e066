"""``RemoteRegistry.call``, the retry rule of remote models, with a transport double: which
replicas a request tries, what each failure does to a replica, and what the client gets. The
same protocol serves plain and streamed answers (the end-to-end cases are in
``tests/server/test_remote_faults.py``). Also the one choice of local or remote."""

from __future__ import annotations

import asyncio
import json

import pytest

from lemonade_jupyter.core.events import EventLog
from lemonade_jupyter.core.remote import RemoteAttempt, RemoteModel, RemoteRegistry
from lemonade_jupyter.core.remote_spec import RemoteSpec, ReplicaSpec
from lemonade_jupyter.core.remote_target import LocalTarget, choose_target
from lemonade_jupyter.core.settings import RouterSettings
from lemonade_jupyter.errors import (
    RemoteRedirectError, RemoteTimeoutError, RemoteUnreachableError, ReplicaTimeoutError,
    ReplicaUnreachableError, UpstreamError,
)

URLS = ("http://a/v1", "http://b/v1", "http://c/v1")
NAME = "user.v"


def registry(tmp_path, urls=URLS[:2], total_s: float = 30.0) -> RemoteRegistry:
    spec = RemoteSpec(NAME, "m", tuple(ReplicaSpec(u) for u in urls))
    (tmp_path / "remote_models.json").write_text(json.dumps([spec.to_json()]))
    settings = RouterSettings(remote_total_timeout_s=total_s)
    return RemoteRegistry(tmp_path, EventLog(), lambda: settings)


class Transport:
    """Answers each attempt from a script: a value to return, or an exception to raise."""

    def __init__(self, *script):
        self.script = list(script)
        self.attempts: list[RemoteAttempt] = []
        self.in_flight_seen: list[int] = []

    async def __call__(self, attempt: RemoteAttempt):
        self.attempts.append(attempt)
        self.in_flight_seen.append(attempt.replica.in_flight)
        step = self.script.pop(0)
        if isinstance(step, BaseException):
            raise step
        return step

    @property
    def urls(self) -> list[str]:
        return [a.replica.url for a in self.attempts]


def refused(sent: bool = False) -> ReplicaUnreachableError:
    return ReplicaUnreachableError("refused", sent=sent)


async def test_a_refused_connection_goes_on_to_the_other_replica(tmp_path):
    remote = registry(tmp_path)
    send = Transport(refused(), "answer")
    assert await remote.call(NAME, send) == "answer"
    first, second = send.urls
    assert first != second
    states = {r.url: r.state for r in remote.get(NAME).replicas}
    assert states == {first: "down", second: "up"}
    assert remote.requests == {(NAME, first, "unreachable"): 1, (NAME, second, "ok"): 1}
    assert send.in_flight_seen == [1, 1]
    assert all(r.in_flight == 0 for r in remote.get(NAME).replicas)


async def test_a_post_the_replica_may_have_received_is_not_sent_again(tmp_path):
    remote = registry(tmp_path)
    send = Transport(refused(sent=True), "never")
    with pytest.raises(RemoteUnreachableError) as info:
        await remote.call(NAME, send, method="POST")
    assert len(send.attempts) == 1
    assert "could be reached (2 registered): refused" in info.value.message


async def test_a_request_safe_to_repeat_goes_on_after_it_was_sent(tmp_path):
    remote = registry(tmp_path)
    send = Transport(refused(sent=True), "answer")
    assert await remote.call(NAME, send, method="GET") == "answer"
    assert len(send.attempts) == 2


async def test_one_other_replica_at_most(tmp_path):
    remote = registry(tmp_path, URLS)
    send = Transport(refused(), refused(), "never")
    with pytest.raises(RemoteUnreachableError) as info:
        await remote.call(NAME, send)
    assert len(send.attempts) == 2 and len(set(send.urls)) == 2
    assert info.value.message.endswith("refused; refused")


async def test_a_timeout_last_is_a_504(tmp_path):
    remote = registry(tmp_path)
    send = Transport(refused(), ReplicaTimeoutError("x timed out", sent=False))
    with pytest.raises(RemoteTimeoutError) as info:
        await remote.call(NAME, send)
    assert info.value.status_code == 504 and "did not answer in time" in info.value.message
    assert {o for (_, _, o) in remote.requests} == {"unreachable", "timeout"}


async def test_the_total_deadline_does_not_mark_the_replica_down(tmp_path):
    remote = registry(tmp_path, URLS[:1], total_s=7.0)
    send = Transport(ReplicaTimeoutError("deadline", sent=True, marks_down=False))
    before = asyncio.get_running_loop().time()
    with pytest.raises(RemoteTimeoutError):
        await remote.call(NAME, send)
    assert before + 7.0 <= send.attempts[0].deadline <= asyncio.get_running_loop().time() + 7.0
    assert remote.get(NAME).replicas[0].state == "unknown"


async def test_a_failure_after_the_answer_started_is_not_retried(tmp_path):
    remote = registry(tmp_path)
    send = Transport(refused(), "never")  # nothing sent, but the answer had begun
    with pytest.raises(UpstreamError) as info:
        await remote.call(NAME, send, replayable=lambda: False)
    assert type(info.value) is UpstreamError
    assert info.value.message == f"Remote model '{NAME}' failed mid-answer: refused"
    assert len(send.attempts) == 1
    assert remote.requests == {(NAME, send.urls[0], "broken"): 1}
    assert remote.get(NAME).replicas[0].state == "down"


async def test_a_refused_answer_ends_the_request_at_once(tmp_path):
    remote = registry(tmp_path)
    refusal = RemoteRedirectError("elsewhere", param="model")
    send = Transport(refusal, "never")
    with pytest.raises(RemoteRedirectError) as info:
        await remote.call(NAME, send)
    assert info.value is refusal and len(send.attempts) == 1
    assert remote.requests == {(NAME, send.urls[0], "refused"): 1}


async def test_a_cancelled_request_gives_its_replica_back(tmp_path):
    remote = registry(tmp_path)
    gate = asyncio.Event()

    async def send(attempt: RemoteAttempt) -> None:
        await gate.wait()

    task = asyncio.ensure_future(remote.call(NAME, send))
    model = remote.get(NAME)
    for _ in range(100):  # until the attempt is in flight
        if model.in_flight:
            break
        await asyncio.sleep(0)
    assert model.in_flight == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert model.in_flight == 0 and {o for (_, _, o) in remote.requests} == {"cancelled"}


async def test_an_unset_key_is_named_and_nothing_is_sent(tmp_path, monkeypatch):
    monkeypatch.delenv("LEMONADE_REMOTE_KEY_GONE", raising=False)
    spec = RemoteSpec(NAME, "m", (ReplicaSpec(URLS[0], "LEMONADE_REMOTE_KEY_GONE"),))
    (tmp_path / "remote_models.json").write_text(json.dumps([spec.to_json()]))
    remote = RemoteRegistry(tmp_path, EventLog(), RouterSettings)
    send = Transport("never")
    with pytest.raises(RemoteUnreachableError, match="LEMONADE_REMOTE_KEY_GONE"):
        await remote.call(NAME, send)
    assert send.attempts == []


def test_local_or_remote_is_one_choice(tmp_path):
    remote = registry(tmp_path)
    aliases = {"fast": "user.local-model"}

    def resolve(name: str) -> str:
        return aliases.get(name, name)

    target = choose_target(NAME, remote, resolve)
    assert isinstance(target, RemoteModel) and target.name == NAME
    assert choose_target("fast", remote, resolve) == LocalTarget("user.local-model")
    assert choose_target("user.other", remote, resolve) == LocalTarget("user.other")
