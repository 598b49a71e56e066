"""Fault shapes of remote models, against a fake upstream (``tests/fakes/fake_openai_upstream``)
on the server's own loop: an upstream's 4xx/5xx passed through in our envelope, a timeout as
504, a stream cut mid-answer ending with an SSE error event (not retried), a key echoed by an
upstream redacted, and TLS verification on by default with a CA bundle setting."""

from __future__ import annotations

import json

import pytest

from tests.fakes.fake_openai_upstream import MODELS, FakeUpstream
from tests.helpers.http import API

KEY = "sk-fake-upstream-0123456789abcdef"
KEY_ENV = "LEMONADE_REMOTE_KEY_FAKE"
GROUP = "user.fake"


@pytest.fixture
def lemonade_traits(request, certificate):
    traits = {"remote_timeout_s": 1.0, "remote_probe_backoff_max_s": 1.0}
    if getattr(request, "param", None) == "ca_bundle":
        traits["remote_ca_bundle"] = str(certificate / "cert.pem")
    return traits


@pytest.fixture
def upstream_key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    return KEY


@pytest.fixture
def fake(jp_asyncio_loop, upstream_key):
    server = jp_asyncio_loop.run_until_complete(FakeUpstream(key=KEY, slow_s=3.0).start())
    yield server
    jp_asyncio_loop.run_until_complete(server.stop())


async def register_all(api, base_url: str) -> None:
    answer = await api.post(f"{API}/pull", {"model_name": GROUP, "recipe": "remote",
                                            "base_url": base_url,
                                            "api_key_env": KEY_ENV})
    assert answer.code == 200, answer.body
    assert sorted(m["model_name"] for m in answer.json["registered"]) == sorted(
        f"{GROUP}/{m}" for m in MODELS)


def chat(model: str, **extra) -> dict:
    return {"model": f"{GROUP}/{model}", "messages": [{"role": "user", "content": "hi"}],
            **extra}


def chats_seen(fake: FakeUpstream) -> int:
    return sum(1 for path, _auth in fake.seen if path == "/v1/chat/completions")


async def test_the_key_goes_to_the_upstream_and_names_come_back_rewritten(api, fake):
    await register_all(api, fake.base_url)
    answer = await api.post(f"{API}/chat/completions", chat("ok"))
    assert answer.code == 200, answer.body
    assert answer.json["model"] == f"{GROUP}/ok"
    assert ("/v1/chat/completions", f"Bearer {KEY}") in fake.seen


async def test_upstream_4xx_and_5xx_keep_their_status_and_message(api, fake):
    await register_all(api, fake.base_url)
    bad = await api.post(f"{API}/chat/completions", chat("bad-request"))
    assert bad.code == 400
    assert bad.error["message"] == "max_tokens is too large: 99999999"
    assert bad.error["type"] == "BadRequestError"
    overloaded = await api.post(f"{API}/chat/completions", chat("overloaded"))
    assert overloaded.code == 503
    assert overloaded.error["message"] == "upstream overloaded, try later"
    assert overloaded.error["type"] == "server_error"
    # An answer, even an error, is no failure of the replica: nothing was retried.
    assert chats_seen(fake) == 2
    entry = (await api.health())["remote_models"][0]
    assert {r["state"] for r in entry["replicas"]} == {"up"}


async def test_a_timeout_is_a_504_and_marks_the_replica_down(api, fake):
    await register_all(api, fake.base_url)
    answer = await api.post(f"{API}/chat/completions", chat("slow"))
    assert answer.code == 504, answer.body
    assert answer.error["code"] == "upstream_timeout"
    assert fake.base_url in answer.error["message"] and "timed out" in answer.error["message"]
    health = await api.health()
    slow = {m["model_name"]: m for m in health["remote_models"]}[f"{GROUP}/slow"]
    assert slow["replicas"][0]["state"] == "down"


async def test_an_upstream_that_echoes_the_key_is_redacted(api, fake):
    await register_all(api, fake.base_url)
    answer = await api.post(f"{API}/chat/completions", chat("echo-key"))
    assert answer.code == 401
    assert answer.error["message"] == "Incorrect API key provided: Bearer [redacted]"
    assert KEY not in answer.body.decode()


async def test_a_stream_cut_mid_answer_ends_with_an_error_event_and_is_not_retried(api, fake):
    await register_all(api, fake.base_url)
    answer = await api.post(f"{API}/chat/completions", chat("midstream", stream=True))
    assert answer.code == 200
    events = [e for e in answer.body.decode().split("\n\n") if e.startswith("data: ")]
    assert json.loads(events[0][6:])["model"] == f"{GROUP}/midstream"
    error = json.loads(events[-1][6:])["error"]
    assert error["code"] == "upstream_error" and "mid-answer" in error["message"]
    assert chats_seen(fake) == 1

    streamed = await api.post(f"{API}/chat/completions", chat("ok", stream=True))
    assert streamed.code == 200
    assert streamed.body.decode().count(f'"model":"{GROUP}/ok"') == 3


async def test_tls_is_verified_by_default(api, jp_asyncio_loop, upstream_key, certificate):
    tls = _server_tls(certificate)
    fake = await FakeUpstream(key=KEY, tls=tls).start()
    try:
        answer = await api.post(f"{API}/pull", {
            "model_name": "user.tls", "recipe": "remote", "base_url": fake.base_url,
            "upstream_model": "ok", "api_key_env": KEY_ENV})
        assert answer.code == 200, answer.body
        assert answer.json["registered"][0]["status"] == "unreachable"
        chat_answer = await api.post(f"{API}/chat/completions", {
            "model": "user.tls", "messages": [{"role": "user", "content": "hi"}]})
        assert chat_answer.code == 502
        assert chat_answer.error["code"] == "upstream_unreachable"
        assert "certificate" in chat_answer.error["message"]
        assert chats_seen(fake) == 0  # the key never left over an unverified connection
    finally:
        await fake.stop()


@pytest.mark.parametrize("lemonade_traits", ["ca_bundle"], indirect=True)
async def test_a_ca_bundle_lets_a_private_ca_through(api, upstream_key, certificate):
    fake = await FakeUpstream(key=KEY, tls=_server_tls(certificate)).start()
    try:
        answer = await api.post(f"{API}/pull", {
            "model_name": "user.tls", "recipe": "remote", "base_url": fake.base_url,
            "upstream_model": "ok", "api_key_env": KEY_ENV})
        assert answer.code == 200, answer.body
        assert answer.json["registered"][0]["status"] == "ready"
        chat_answer = await api.post(f"{API}/chat/completions", {
            "model": "user.tls", "messages": [{"role": "user", "content": "hi"}]})
        assert chat_answer.code == 200, chat_answer.body
        assert chat_answer.json["model"] == "user.tls"
    finally:
        await fake.stop()


def _server_tls(certificate):
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certificate / "cert.pem", certificate / "key.pem")
    return context


@pytest.mark.parametrize("label, route, body, upstream_path", [
    ("embeddings", "embeddings", {"input": "hello"}, "/v1/embeddings"),
    ("reranking", "reranking", {"query": "q", "documents": ["a", "b"]}, "/v1/rerank"),
])
async def test_embeddings_and_reranking_go_to_the_upstream_routes(api, fake, label, route, body,
                                                                  upstream_path):
    answer = await api.post(f"{API}/pull", {
        "model_name": "user.enc", "recipe": "remote", "base_url": fake.base_url,
        "upstream_model": "ok", "api_key_env": KEY_ENV, "labels": [label]})
    assert answer.code == 200, answer.body
    served = await api.post(f"{API}/{route}", {"model": "user.enc", **body})
    assert served.code == 200, served.body
    assert served.json["model"] == "user.enc"
    assert (upstream_path, f"Bearer {KEY}") in fake.seen
    # The same checks as for local models: a chat request to it is refused before any upstream.
    refused = await api.post(f"{API}/chat/completions", {
        "model": "user.enc", "messages": [{"role": "user", "content": "hi"}]})
    assert refused.code == 400 and "does not generate text" in refused.error["message"]
    assert chats_seen(fake) == 0


async def test_a_stream_that_cannot_connect_fails_over_before_its_first_byte(api, upstream_key):
    first = await FakeUpstream(key=KEY).start()
    second = await FakeUpstream(key=KEY).start()
    try:
        answer = await api.post(f"{API}/pull", {
            "model_name": "user.pair", "recipe": "remote", "upstream_model": "ok",
            "base_urls": [first.base_url, second.base_url], "api_key_env": KEY_ENV})
        assert answer.code == 200, answer.body
        assert answer.json["registered"][0]["status"] == "ready"
        await first.stop()  # still "up" for the router: the next probe is 10 s away
        streamed = await api.post(f"{API}/chat/completions", {
            "model": "user.pair", "stream": True,
            "messages": [{"role": "user", "content": "hi"}]})
        assert streamed.code == 200, streamed.body
        assert streamed.body.decode().count('"model":"user.pair"') == 3
        assert chats_seen(second) == 1
        states = {r["base_url"]: r["state"]
                  for r in (await api.health())["remote_models"][0]["replicas"]}
        assert states == {first.base_url: "down", second.base_url: "up"}
    finally:
        await second.stop()
