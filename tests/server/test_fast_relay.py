"""The proxy's relay of SSE, through a real Jupyter server, with ``benchmarks/fast_upstream.py`` as
every backend: a stand-in for llama-server that streams as fast as asked, so events arrive
many to a read and cut anywhere. Every event must come through whole and renamed, a client
that stops reading must hold the backend back, and one that goes away must close the backend's
stream. (The stand-in itself is checked in ``test_fast_upstream.py``.)"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import httpx
import pytest

from tests.helpers.http import API
from tests.helpers.polling import wait_until

STAND_IN = Path(__file__).resolve().parents[2] / "benchmarks" / "fast_upstream.py"


@pytest.fixture(scope="module")
def fast_upstream_path(tmp_path_factory) -> str:
    """An executable the router runs in place of llama-server: the stand-in, on this Python."""
    path = tmp_path_factory.mktemp("fast") / "fast-upstream-server"
    path.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{STAND_IN}" "$@"\n')
    path.chmod(0o755)
    return str(path)


@pytest.fixture
def lemonade_traits(fast_upstream_path):
    return {"llama_server_path": fast_upstream_path}


@pytest.fixture
def backend(api, default_model_name, jp_asyncio_loop) -> str:
    """The default model, loaded: its backend is a stand-in (fixtures are sync, see conftest)."""
    jp_asyncio_loop.run_until_complete(api.load(default_model_name))
    return default_model_name


def _body(model: str, tokens: int, rate: float, stream: bool = True) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": tokens, "stream": stream, "x_tokens_per_s": rate}


async def _stats(lemonade, model: str) -> dict:
    live = lemonade.router.get_live(model)
    assert live is not None and live.backend is not None
    async with httpx.AsyncClient() as client:
        r = await client.get(f"{live.backend.url}/stats", headers=live.backend.auth_headers(),
                             timeout=5)
    r.raise_for_status()
    return r.json()  # type: ignore[no-any-return]


async def test_a_fast_stream_arrives_whole_and_renamed(backend, server_url, token):
    tokens = 3000
    raw = b""
    async with httpx.AsyncClient(timeout=60) as http:
        async with http.stream("POST", f"{server_url}{API}/chat/completions",
                               json=_body(backend, tokens, 1e6),
                               headers={"Authorization": f"token {token}"}) as resp:
            assert resp.status_code == 200
            assert resp.headers["content-type"].startswith("text/event-stream")
            async for chunk in resp.aiter_raw():
                raw += chunk
    assert raw.endswith(b"data: [DONE]\n\n")
    events = raw.split(b"\n\n")[:-2]  # less [DONE] and what follows it
    assert len(events) == tokens + 1  # one per token and the final one
    for event in events:
        assert event.startswith(b"data: {")
        data = json.loads(event[6:])
        assert data["model"] == backend  # the stand-in names its GGUF path
    assert data["choices"][0]["finish_reason"] == "length"


async def test_a_plain_answer_is_renamed(backend, api, default_model_file):
    answer = await api.post(f"{API}/completions",
                            {"model": backend, "prompt": "Hi", "max_tokens": 5})
    assert answer.code == 200, answer.body
    assert answer.json["model"] == backend
    assert answer.json["choices"][0]["text"] == " tok" * 5
    assert default_model_file not in answer.body.decode()


async def test_plain_requests_share_a_kept_connection_and_streams_get_their_own(
    backend, lemonade, api
):
    before = await _stats(lemonade, backend)
    for _ in range(10):
        answer = await api.post(f"{API}/chat/completions", _body(backend, 3, 1e6, stream=False))
        assert answer.code == 200, answer.body
    for _ in range(3):
        answer = await api.post(f"{API}/chat/completions", _body(backend, 3, 1e6))
        assert answer.body.endswith(b"data: [DONE]\n\n")
    after = await _stats(lemonade, backend)
    # Each of our /stats calls opens one connection; the plain requests at most one more
    # (a pooled one the backend dropped); each stream exactly one of its own, and the last
    # one's end opened one ahead for the next stream (test_warm_connections.py).
    assert after["requests"] - before["requests"] == 13
    assert after["connections"] - before["connections"] <= 1 + 1 + 3 + 1
    assert after["connections"] - before["connections"] >= 1 + 3


async def test_a_client_that_stops_reading_holds_the_backend_back(
    backend, lemonade, server_url, token
):
    """Nothing on the way buffers without bound: once every buffer between the client and the
    stand-in is full, the stand-in stops sending, while the stream has far more to send."""
    port = int(server_url.split(":")[2].split("/")[0])
    path = server_url.split(f":{port}", 1)[1] + f"{API}/chat/completions"
    body = json.dumps(_body(backend, 10_000_000, 20_000)).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: token {token}"
                     f"\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        assert (await reader.readline()).startswith(b"HTTP/1.1 200")
        # From here on nothing is read (asyncio stops reading once its own 64 KiB are full).
        samples: list[int] = []

        async def stalled() -> bool:
            samples.append((await _stats(lemonade, backend))["tokens"])
            return len(samples) >= 3 and samples[-1] == samples[-3] > 0

        await wait_until(stalled, timeout=60, interval=0.3,
                         what="the stand-in to stop sending to a client that reads nothing")
        assert samples[-1] < 10_000_000
        assert (await _stats(lemonade, backend))["active"] == 1  # held back, not ended
    finally:
        writer.close()

    async def cut() -> bool:
        stats = await _stats(lemonade, backend)
        return stats["active"] == 0 and stats["cut_by_client"] == 1

    await wait_until(cut, timeout=30, what="the proxy to close the stand-in's stream")


async def test_a_client_that_goes_away_closes_the_backends_stream(
    backend, lemonade, server_url, token, api
):
    async with httpx.AsyncClient(timeout=60) as http:
        async with http.stream("POST", f"{server_url}{API}/chat/completions",
                               json=_body(backend, 1_000_000, 200),
                               headers={"Authorization": f"token {token}"}) as resp:
            lines = resp.aiter_lines()
            async for line in lines:
                if line.startswith("data: {"):
                    break
            assert (await _stats(lemonade, backend))["active"] == 1
            await lines.aclose()

    async def cut() -> bool:
        stats = await _stats(lemonade, backend)
        return stats["active"] == 0 and stats["cut_by_client"] == 1

    await wait_until(cut, timeout=30, what="the proxy to close the stand-in's stream")
    entry = (await api.loaded())[backend]
    assert entry["in_flight"] == 0 and entry["is_busy"] is False
