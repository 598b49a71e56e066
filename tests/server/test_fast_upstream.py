"""``benchmarks/fast_upstream.py``, the llama-server stand-in of the benchmarks and of
``test_fast_relay.py``: it must answer like llama-server (the shapes the proxy relies on), or
what it measures means nothing. Its speed is the benchmark's business, not a test's."""

from __future__ import annotations

import json
import socket

import httpx
import pytest

from benchmarks.procs import FastUpstream
from tests.helpers.polling import wait_for

MODEL = "/models/stand-in.gguf"


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory):
    up = FastUpstream(tmp_path_factory.mktemp("stand-in"), model=MODEL)
    up.start()
    yield up
    up.stop()


def _raw_post(port: int, headers: dict[str, str], body: dict) -> tuple[bytes, bytes]:
    """POST over a socket of our own, read until the server closes it: (head, raw body)."""
    data = json.dumps(body).encode()
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n{head}"
                     f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    answer_head, _, rest = raw.partition(b"\r\n\r\n")
    return answer_head, rest


def _unchunk(body: bytes) -> bytes:
    out = b""
    while True:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return out
        out, body = out + body[:size], body[size + 2:]


def test_a_stream_is_chunked_sse_like_llama_servers_then_closed(stand_in):
    head, body = _raw_post(stand_in.port, stand_in.headers, {
        "messages": [], "max_tokens": 5, "stream": True, "x_tokens_per_s": 5000})
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"Transfer-Encoding: chunked" in head
    assert b"Connection: close" not in head  # advertises keep-alive, closed anyway
    events = _unchunk(body).split(b"\n\n")
    assert events[-2:] == [b"data: [DONE]", b""]
    data = [json.loads(e[6:]) for e in events[:-2]]
    assert [d["choices"][0]["delta"].get("content") for d in data] == [" tok"] * 5 + [None]
    assert {d["model"] for d in data} == {MODEL}
    assert data[-1]["choices"][0]["finish_reason"] == "length"
    assert data[-1]["timings"]["predicted_n"] == 5


def test_a_plain_answer_and_the_routes_the_router_uses(stand_in):
    with httpx.Client(base_url=stand_in.url, timeout=10) as client:
        assert client.get("/health").status_code == 200  # public
        assert client.get("/props").status_code == 401
        assert client.get("/props", headers=stand_in.headers).json()["model_path"] == MODEL
        r = client.post("/v1/completions", headers=stand_in.headers,
                        json={"prompt": "x", "max_tokens": 3})
        assert r.status_code == 200
        assert r.json()["choices"][0]["text"] == " tok tok tok"
        assert r.json()["model"] == MODEL
        assert client.post("/v1/completions", json={"prompt": "x"}).status_code == 401


def test_stats_count_a_stream_the_client_cut(stand_in):
    before = stand_in.stats()
    data = json.dumps({"messages": [], "max_tokens": 10_000_000, "stream": True,
                       "x_tokens_per_s": 100}).encode()
    head = "".join(f"{k}: {v}\r\n" for k, v in stand_in.headers.items())
    with socket.create_connection(("127.0.0.1", stand_in.port), timeout=10) as sock:
        sock.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n{head}"
                     f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
        assert b"data: {" in sock.recv(65536) + sock.recv(65536)
        assert stand_in.stats()["active"] == before["active"] + 1
    after = wait_for(lambda: (s := stand_in.stats())["cut_by_client"] > before["cut_by_client"]
                     and s, what="the stand-in to see the client go")
    assert after["cut_by_client"] == before["cut_by_client"] + 1
    assert after["active"] == before["active"]
    assert after["streams"] == before["streams"] + 1
