"""Remote models against hostile or broken upstreams: every loop, retry and answer is bounded.

A remote model that leads back to its own router (refused after one hop), a replica down for
thousands of failures (the back-off stays capped), a probe round that raises (the loop goes
on), a replica that reads a request and drops the connection (never sent it twice), cookies
(never kept), an upstream listing 20,000 models or answering 150 MB (capped, unread beyond the
cap), redirects (followed only within the origin) and an upstream that drips (cut at the total
deadline). The upstreams are ``tests/fakes/fake_openai_upstream.py`` on the server's loop.
"""

from __future__ import annotations

import asyncio
import json
import time

import psutil
import pytest

from tests.fakes.fake_openai_upstream import FakeUpstream
from tests.fakes.tcp_forwarder import TcpForwarder
from tests.helpers.http import API
from tests.helpers.polling import wait_until


@pytest.fixture
def lemonade_traits(request):
    return {"remote_timeout_s": 1.0, "remote_total_timeout_s": 2.5, "remote_max_answer_mib": 1.0,
            "remote_probe_backoff_max_s": 1.0, **getattr(request, "param", {})}


@pytest.fixture
def jp_base_url() -> str:
    """A plain base path: a remote model's URL may hold no %-escapes, and the loop test points
    one at this server (pytest-jupyter's default base path has one)."""
    return "/"


@pytest.fixture
def upstreams(jp_asyncio_loop):
    """Starts fake upstreams (``await upstreams(**options)``); stops them all at the end."""
    started: list[FakeUpstream] = []

    async def start(**options) -> FakeUpstream:
        fake = await FakeUpstream(**options).start()
        started.append(fake)
        return fake

    yield start
    for fake in started:
        jp_asyncio_loop.run_until_complete(fake.stop())


def chat(model: str, **extra) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}


def chats_seen(fake: FakeUpstream, path: str = "/v1/chat/completions") -> int:
    return sum(1 for seen, _auth in fake.seen if seen == path)


async def register(api, name: str, upstream_model: str, *fakes: FakeUpstream) -> dict:
    answer = await api.post(f"{API}/pull", {
        "model_name": name, "recipe": "remote", "upstream_model": upstream_model,
        "base_urls": [f.base_url for f in fakes]})
    assert answer.code == 200, answer.body
    return answer.json["registered"][0]  # type: ignore[no-any-return]


def events(answer) -> list[dict]:
    return [json.loads(e[6:]) for e in answer.body.decode().split("\n\n")
            if e.startswith("data: ") and e != "data: [DONE]"]


async def peak_rss_during(work):
    """``work``'s result and the highest RSS of this process (the server's) meanwhile."""
    me = psutil.Process()
    peak = me.memory_info().rss
    task = asyncio.ensure_future(work)
    while not task.done():
        peak = max(peak, me.memory_info().rss)
        await asyncio.sleep(0.005)
    return task.result(), peak


# ---------------------------------------------------------------------------- the hop guard
async def test_a_remote_model_that_leads_back_to_its_router_is_refused_after_one_hop(
        api, jp_http_port, jp_base_url, token, monkeypatch):
    """The URL check of a pull refuses the server's own port, so the router is reached here the
    way a reverse proxy would reach it: through a forwarder on another port, which no URL
    check can tell from another server. The hop header is what stops the loop."""
    forwarder = await TcpForwarder(jp_http_port).start()
    monkeypatch.setenv("LEMONADE_REMOTE_KEY_ROUTER", token)
    try:
        base_url = f"http://127.0.0.1:{forwarder.port}{jp_base_url}lemonade/api/v1"
        answer = await api.post(f"{API}/pull", {
            "model_name": "user.self", "recipe": "remote", "base_url": base_url,
            "upstream_model": "user.self", "api_key_env": "LEMONADE_REMOTE_KEY_ROUTER"})
        assert answer.code == 200, answer.body

        looped = await api.post(f"{API}/chat/completions", chat("user.self"),
                                request_timeout=15)
        # The probe and the one forwarded request: no request went round a second time.
        assert forwarder.connections <= 3, forwarder.connections
        assert looped.code == 508, looped.body
        assert "came back to the router that forwarded it" in looped.error["message"]
        started = time.monotonic()
        await api.health()
        assert time.monotonic() - started < 1.0
        # The probe came back too, and was refused: the replica is down, and says why.
        registered = answer.json["registered"][0]
        assert registered["status"] == "unreachable"
        assert "leads back to this router" in registered["replicas"][0]["last_error"]
    finally:
        await forwarder.stop()


# ---------------------------------------------------------------------------- back-off, probes
async def test_thousands_of_failures_keep_the_back_off_capped_and_requests_answered(
        api, lemonade, upstreams):
    """A day-long outage: 2,000 failures in a row once overflowed the back-off, and every later
    request (and probe) of the replica ended in a 500."""
    fake = await upstreams()
    await register(api, "user.one", "ok", fake)
    registry = lemonade.router.remote
    (replica,) = registry.require("user.one").replicas
    for _ in range(2000):
        registry.failed(replica, "refused")
    assert 0 < replica.next_probe - time.monotonic() <= 1.0  # remote_probe_backoff_max_s
    answer = await api.post(f"{API}/chat/completions", chat("user.one"))
    assert answer.code == 200, answer.body
    entry = (await api.health())["remote_models"][0]
    assert entry["replicas"][0]["state"] == "up"


@pytest.mark.parametrize("lemonade_traits", [{"remote_probe_interval_s": 0.1}], indirect=True)
async def test_the_probe_loop_goes_on_after_a_round_that_raises(api, lemonade, upstreams,
                                                               monkeypatch):
    registry = lemonade.router.remote
    real_round = registry._round
    injected: list[int] = []

    async def round_that_fails_once():
        if not injected:
            injected.append(1)
            raise RuntimeError("injected into one round of the probe loop")
        return await real_round()

    monkeypatch.setattr(registry, "_round", round_that_fails_once)
    fake = await upstreams()
    assert (await register(api, "user.probed", "ok", fake))["status"] == "ready"
    await wait_until(lambda: injected, timeout=10, what="the injected failure")
    await fake.stop()  # only a probe can find it down now: no request goes to it

    async def down():
        entry = (await api.health())["remote_models"][0]
        return entry["replicas"][0]["state"] == "down"

    await wait_until(down, timeout=20, what="the probe loop to find the replica down")


# ---------------------------------------------------------------------------- the retry rule
async def test_a_replica_that_drops_a_request_it_read_gets_it_once_and_no_other_does(
        api, upstreams):
    """The replica read the request, then dropped the connection: it may have acted on it, so
    neither it nor another replica gets it again (it once got it twice, the other once)."""
    dropping, other = await upstreams(), await upstreams()
    await register(api, "user.pair", "drop", dropping, other)
    answer = await api.post(f"{API}/chat/completions", chat("user.pair"))
    assert answer.code == 502, answer.body
    assert answer.error["code"] == "upstream_unreachable"
    assert (chats_seen(dropping), chats_seen(other)) == (1, 0)

    # The first replica is down now, so a stream goes to the other one, which drops it too
    # (the same upstream model): it is not sent back to the first one either.
    streamed = await api.post(f"{API}/chat/completions", chat("user.pair", stream=True))
    assert streamed.code == 502, streamed.body
    assert (chats_seen(dropping), chats_seen(other)) == (1, 1)


async def test_a_request_that_could_not_connect_goes_to_one_other_replica(api, upstreams):
    first, second = await upstreams(), await upstreams()
    await register(api, "user.pair", "ok", first, second)
    await first.stop()  # nothing can reach it: the request was never sent
    answer = await api.post(f"{API}/chat/completions", chat("user.pair"))
    assert answer.code == 200, answer.body
    assert answer.json["model"] == "user.pair"
    assert chats_seen(second) == 1


# ---------------------------------------------------------------------------- cookies
async def test_a_cookie_set_by_one_upstream_is_never_sent_to_another(api, upstreams):
    """Two upstreams on one host (cookies ignore ports): one sets a login cookie."""
    setter = await upstreams(host_name="localhost", set_cookie="session=secret-of-the-setter")
    other = await upstreams(host_name="localhost")
    await register(api, "user.setter", "ok", setter)
    for _ in range(2):
        assert (await api.post(f"{API}/chat/completions", chat("user.setter"))).code == 200
    await register(api, "user.other", "ok", other)
    assert (await api.post(f"{API}/chat/completions", chat("user.other"))).code == 200
    assert chats_seen(other) == 1 and chats_seen(setter) == 2
    assert setter.cookies + other.cookies == [None] * len(setter.cookies + other.cookies)


# ---------------------------------------------------------------------------- caps
async def test_an_upstream_listing_more_models_than_the_cap_registers_none(api, upstreams):
    crowded = await upstreams(models=[f"org/m{i}" for i in range(20_000)])
    answer = await api.post(f"{API}/pull", {"model_name": "user.crowd", "recipe": "remote",
                                            "base_url": crowded.base_url})
    assert answer.code == 400, answer.body
    assert "20000 models" in answer.error["message"]
    assert "remote_max_models_per_upstream (256)" in answer.error["message"]
    assert (await api.health())["remote_models"] == []


async def test_an_upstream_listing_as_many_models_as_the_cap_registers_them(api, upstreams):
    full = await upstreams(models=[f"org/m{i:03d}" for i in range(256)])
    answer = await api.post(f"{API}/pull", {"model_name": "user.full", "recipe": "remote",
                                            "base_url": full.base_url})
    assert answer.code == 200, answer.body
    assert len(answer.json["registered"]) == 256


async def test_an_answer_beyond_the_cap_is_cut_unread_with_bounded_memory(api, upstreams):
    huge = await upstreams(huge_bytes=150 << 20)
    await register(api, "user.huge", "huge", huge)
    before = psutil.Process().memory_info().rss
    answer, peak = await peak_rss_during(api.post(f"{API}/chat/completions", chat("user.huge")))
    assert answer.code == 502, answer.body
    assert answer.error["code"] == "upstream_answer_too_large"
    assert "remote_max_answer_mib (1 MiB)" in answer.error["message"]
    assert peak - before < 40 << 20, f"RSS grew by {(peak - before) >> 20} MiB"
    assert huge.huge_sent < 50 << 20  # the connection was closed: the rest never came


async def test_the_error_answer_of_a_stream_is_read_up_to_its_cap(api, upstreams):
    huge = await upstreams(huge_bytes=150 << 20, huge_status=400)
    await register(api, "user.huge", "huge", huge)
    before = psutil.Process().memory_info().rss
    answer, peak = await peak_rss_during(
        api.post(f"{API}/chat/completions", chat("user.huge", stream=True)))
    assert answer.code == 400, answer.body[:200]
    assert len(answer.error["message"]) <= 64 << 10
    assert peak - before < 40 << 20, f"RSS grew by {(peak - before) >> 20} MiB"
    assert huge.huge_sent < 50 << 20


async def test_a_model_list_beyond_its_cap_is_refused_unread(api, upstreams):
    padded = await upstreams(list_bytes=150 << 20)
    before = psutil.Process().memory_info().rss
    answer, peak = await peak_rss_during(api.post(f"{API}/pull", {
        "model_name": "user.padded", "recipe": "remote", "base_url": padded.base_url}))
    assert answer.code == 502, answer.body
    assert "model list is larger than 4 MiB" in answer.error["message"]
    assert peak - before < 40 << 20, f"RSS grew by {(peak - before) >> 20} MiB"
    assert (await api.health())["remote_models"] == []


# ---------------------------------------------------------------------------- redirects
async def test_a_redirect_within_the_origin_is_followed(api, upstreams):
    fake = await upstreams()
    await register(api, "user.moving", "redirect", fake)
    answer = await api.post(f"{API}/chat/completions", chat("user.moving"))
    assert answer.code == 200, answer.body
    assert answer.json["choices"][0]["message"]["content"] == "Moved"
    assert answer.json["model"] == "user.moving"
    assert chats_seen(fake, "/v1/moved/chat/completions") == 1


@pytest.mark.parametrize("stream", [False, True])
async def test_a_redirect_to_another_origin_is_refused_with_a_json_error(api, upstreams,
                                                                         stream):
    elsewhere = await upstreams()
    fake = await upstreams(redirect_to=f"{elsewhere.base_url}/chat/completions")
    await register(api, "user.moving", "redirect", fake)
    answer = await api.post(f"{API}/chat/completions", chat("user.moving", stream=stream))
    assert answer.code == 502, answer.body
    assert answer.error["code"] == "upstream_redirect"
    assert f"to http://127.0.0.1:{elsewhere.port}" in answer.error["message"]
    assert chats_seen(elsewhere) == 0


async def test_endless_redirects_within_the_origin_end_after_a_few(api, upstreams):
    fake = await upstreams(redirect_to="/v1/chat/completions")
    await register(api, "user.circle", "redirect", fake)
    answer = await api.post(f"{API}/chat/completions", chat("user.circle"))
    assert answer.code == 502, answer.body
    assert answer.error["code"] == "upstream_redirect"
    assert "more than 3 redirects" in answer.error["message"]
    assert chats_seen(fake) == 4


# ---------------------------------------------------------------------------- total deadline
async def test_a_dripping_answer_ends_at_the_total_deadline(api, upstreams):
    fake = await upstreams()
    await register(api, "user.drip", "drip", fake)
    started = time.monotonic()
    answer = await api.post(f"{API}/chat/completions", chat("user.drip"))
    took = time.monotonic() - started
    assert answer.code == 504, answer.body
    assert answer.error["code"] == "upstream_timeout"
    assert "total deadline" in answer.error["message"]
    assert 2.5 <= took < 10, took  # remote_total_timeout_s, though never silent for 1 s


async def test_a_dripping_stream_ends_with_an_error_event_at_the_total_deadline(api, upstreams):
    fake = await upstreams()
    await register(api, "user.drip", "drip", fake)
    started = time.monotonic()
    answer = await api.post(f"{API}/chat/completions", chat("user.drip", stream=True))
    took = time.monotonic() - started
    assert answer.code == 200, answer.body
    sent = events(answer)
    assert sent[0]["model"] == "user.drip"
    assert sent[-1]["error"]["code"] == "upstream_timeout"
    assert "total deadline" in sent[-1]["error"]["message"]
    assert 2.5 <= took < 10, took
