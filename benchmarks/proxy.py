"""Sections 1 and 2: what the proxy adds to a request, direct vs through the router.

The baseline is a bare ``llama-server`` started by hand with the router's own command line; the
subject is the same request through ``lemonade/api/v1/chat/completions`` of a real Jupyter
server, whose router runs its own backend on the same file with the same flags. Requests
alternate between the two (rotating the order each repetition) on keep-alive clients.

A third, control arm sends the same request straight to the router's own backend (its key read
from ``/proc``): router minus control is the proxy alone; control minus bare shows how much two
``llama-server`` instances of the same file differ on this machine.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx

from lemonade_jupyter.core.catalog import DEFAULT_MODEL

from .common import PROMPT, Context, Reps, interleaved_by_backend
from .procs import BareLlama, BenchmarkError, JupyterServer, Relay, backend_api_key, cpu_s
from .report import Row, Target

S1 = "1. Proxy, non-streaming"
S2 = "2. Proxy, streaming"


def _router_backend(server: JupyterServer, client: httpx.Client) -> tuple[str, dict[str, str]] | None:
    """URL and auth headers of the router's backend for the default model (control arm)."""
    health = client.get(server.api("api/v1/health"), headers=server.headers).json()
    for m in health["all_models_loaded"]:
        if m["model_name"] == DEFAULT_MODEL and m.get("pid"):
            key = backend_api_key(m["pid"])
            if key:
                return m["backend_url"], {"Authorization": f"Bearer {key}",
                                          "Content-Type": "application/json"}
    return None


def _check_chat(r: httpx.Response, where: str) -> None:
    if r.status_code != 200:
        raise BenchmarkError(f"{where}: HTTP {r.status_code}: {r.text[:300]}")
    if not r.json().get("choices"):
        raise BenchmarkError(f"{where}: answer without choices: {r.text[:300]}")


def run_nonstreaming(ctx: Context, server: JupyterServer, bare: BareLlama) -> None:
    body = json.dumps({"model": DEFAULT_MODEL, "messages": PROMPT, "max_tokens": 1,
                       "temperature": 0}).encode()
    relay = Relay(bare.port)
    relay.start()
    with httpx.Client(timeout=60) as direct, httpx.Client(timeout=60) as routed, \
            httpx.Client(timeout=60) as control, httpx.Client(timeout=60) as relayed:
        r = routed.post(server.api("api/v1/load"), headers=server.headers,
                        json={"model_name": DEFAULT_MODEL})
        if r.status_code != 200:
            raise BenchmarkError(f"/load failed: {r.status_code} {r.text[:300]}")
        ctl = _router_backend(server, routed)

        cpu: dict[str, list[float]] = {"direct": [], "router": []}

        def arm(client: httpx.Client, url: str, headers: dict[str, str], where: str,
                pid: int | None = None):
            def once() -> float:
                c0 = cpu_s(pid) if pid else 0.0
                t0 = time.perf_counter()
                resp = client.post(url, content=body, headers=headers)
                dt = (time.perf_counter() - t0) * 1000
                if pid:  # the CPU this request cost the process that served it
                    cpu[where].append((cpu_s(pid) - c0) * 1000)
                _check_chat(resp, where)
                return dt
            return once

        bare_arms = {
            "direct": arm(direct, bare.url + "/v1/chat/completions", bare.headers, "direct",
                          bare.pid),
            "relay": arm(relayed, relay.url + "/v1/chat/completions", bare.headers, "relay"),
        }
        router_arms = {
            "router": arm(routed, server.api("api/v1/chat/completions"), server.headers,
                          "router", server.pid),
        }
        if ctl is not None:
            router_arms["control"] = arm(control, ctl[0] + "/v1/chat/completions", ctl[1],
                                         "control")
        # The unmeasured request that warms each backend before its arms run.
        warm_bare = arm(direct, bare.url + "/v1/chat/completions", bare.headers, "warm")
        warm_router = arm(routed, server.api("api/v1/chat/completions"), server.headers, "warm")
        groups = [(warm_bare, bare_arms), (warm_router, router_arms)]
        interleaved_by_backend(groups, ctx.reps(Reps(5, 5, 0), Reps(2, 2, 0)))  # warm-up
        cpu = {"direct": [], "router": []}
        got = interleaved_by_backend(groups, ctx.reps(Reps(60, 400, 60), Reps(8, 8, 0)))
    relay.stop()
    ctx.raw["nonstreaming_ms"] = got
    ctx.raw["nonstreaming_cpu_ms"] = cpu
    ctx.add(Row(S1, "latency p50, max_tokens 1", "ms", "direct", got["direct"],
                "router", got["router"], "median",
                Target("max_diff", 1.0, "≤ +1 ms")))
    ctx.add(Row(S1, "latency p95, max_tokens 1", "ms", "direct", got["direct"],
                "router", got["router"], "p95",
                Target("max_diff", 3.0, "≤ +3 ms")))
    ctx.add(Row(S1, "CPU time per request", "ms", "bare llama-server process", cpu["direct"],
                "Jupyter server process (router)", cpu["router"], "median",
                note="CPU the serving process used during each request (scheduler counters): "
                     "what the proxy costs the 2 cores, not moved much by scheduling noise"))
    if "control" in got:
        ctx.add(Row(S1, "control: proxy alone (p50)", "ms", "router's backend direct",
                    got["control"], "router", got["router"], "median",
                    Target("max_diff", 1.0, "≤ +1 ms"),
                    note="same backend process on both sides"))
        ctx.add(Row(S1, "control: proxy alone (p95)", "ms", "router's backend direct",
                    got["control"], "router", got["router"], "p95",
                    Target("max_diff", 3.0, "≤ +3 ms")))
        ctx.add(Row(S1, "control: bare vs router's backend (p50)", "ms", "bare llama-server",
                    got["direct"], "router's backend direct", got["control"], "median",
                    note="two llama-server instances, no proxy"))
    else:
        ctx.notes.append("Control arm skipped: the router backend's key was not readable.")
    ctx.add(Row(S1, "floor: one extra Python hop (p50)", "ms", "direct", got["direct"],
                "byte relay (benchmarks/relay.py)", got["relay"], "median",
                note="asyncio byte copy, no HTTP: the least any Python proxy adds here"))


# ---------------------------------------------------------------------------------- streaming
async def _stream(client: httpx.AsyncClient, url: str, headers: dict[str, str],
                  body: bytes) -> dict[str, float]:
    """One stream; like the OpenAI client, retry once if the server closed the keep-alive
    connection before answering (llama-server closes it after every stream), with the retry
    counted in the time to first token."""
    t0 = time.perf_counter()
    try:
        return await _stream_once(client, url, headers, body, t0)
    except httpx.RemoteProtocolError:
        result = await _stream_once(client, url, headers, body, t0)
        result["retried"] = 1.0
        return result


async def _stream_once(client: httpx.AsyncClient, url: str, headers: dict[str, str],
                       body: bytes, t0: float) -> dict[str, float]:
    first: float | None = None
    chunks = 0
    predicted: int | None = None
    async with client.stream("POST", url, content=body, headers=headers) as resp:
        if resp.status_code != 200:
            raise BenchmarkError(f"stream {url}: HTTP {resp.status_code}: "
                                 f"{(await resp.aread())[:300]!r}")
        async for line in resp.aiter_lines():
            if not line.startswith("data: "):
                continue
            payload = line[6:]
            if payload == "[DONE]":
                break
            event = json.loads(payload)
            if "error" in event:
                raise BenchmarkError(f"stream {url}: error event {payload[:300]}")
            choices = event.get("choices") or []
            if choices and (choices[0].get("delta") or {}).get("content"):
                chunks += 1
                if first is None:
                    first = time.perf_counter()
            timings = event.get("timings")
            if isinstance(timings, dict) and "predicted_n" in timings:
                predicted = int(timings["predicted_n"])
    end = time.perf_counter()
    if first is None:
        raise BenchmarkError(f"stream {url}: no content token")
    return {"ttft_ms": (first - t0) * 1000, "tokens": float(predicted or chunks),
            "start": t0, "end": end, "retried": 0.0}


async def _slots_busy(client: httpx.AsyncClient, url: str, headers: dict[str, str],
                      stop: asyncio.Event) -> int:
    """The most slots seen processing at once while ``stop`` is unset (-1: not readable)."""
    most = -1
    while not stop.is_set():
        try:
            r = await client.get(url + "/slots", headers=headers, timeout=2)
            if r.status_code == 200:
                busy = sum(1 for s in r.json() if s.get("is_processing"))
                most = max(most, busy)
        except (httpx.HTTPError, ValueError, AttributeError):
            pass
        try:
            await asyncio.wait_for(stop.wait(), 0.1)
        except asyncio.TimeoutError:
            pass
    return most


async def _batch(client: httpx.AsyncClient, url: str, headers: dict[str, str], body: bytes,
                 concurrency: int, watch: tuple[str, dict[str, str]] | None,
                 watcher: httpx.AsyncClient) -> dict[str, Any]:
    stop = asyncio.Event()
    spy = asyncio.ensure_future(_slots_busy(watcher, *watch, stop)) if watch else None
    t0 = time.perf_counter()
    try:
        results = await asyncio.gather(*(_stream(client, url, headers, body)
                                         for _ in range(concurrency)))
    finally:
        stop.set()
        busy = await spy if spy else -1
    wall = max(r["end"] for r in results) - t0
    tokens = sum(r["tokens"] for r in results)
    return {"tok_s": tokens / wall, "ttft_ms": [r["ttft_ms"] for r in results],
            "tokens": [r["tokens"] for r in results], "slots_busy": busy,
            "retries": sum(r["retried"] for r in results)}


async def _streaming(ctx: Context, server: JupyterServer, bare: BareLlama) -> None:
    max_tokens = 8 if ctx.smoke else 128

    def body(n: int) -> bytes:
        return json.dumps({"model": DEFAULT_MODEL, "messages": PROMPT, "max_tokens": n,
                           "temperature": 0, "stream": True, "ignore_eos": True}).encode()

    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    timeout = httpx.Timeout(300, connect=10)
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as direct, \
            httpx.AsyncClient(limits=limits, timeout=timeout) as routed, \
            httpx.AsyncClient(timeout=timeout) as watcher:
        with httpx.Client(timeout=30) as sync:
            ctl = _router_backend(server, sync)
            props = sync.get(bare.url + "/props", headers=bare.headers).json()
        sides = {
            "direct": (direct, bare.url + "/v1/chat/completions", bare.headers,
                       (bare.url, bare.headers)),
            "router": (routed, server.api("api/v1/chat/completions"), server.headers, ctl),
        }
        # Warm-up: open 16 keep-alive connections on each side with short streams.
        for client, url, headers, _w in sides.values():
            await _batch(client, url, headers, body(2), 4 if ctx.smoke else 16, None, watcher)
        # A starved llama-server (other work on the 2 cores) can slow a 16x128-token batch to
        # minutes: past a hard cap the section stops after one full repetition and says so.
        hard_cap_s = 30.0 if ctx.smoke else 75.0
        batch_cap_s = 60.0 if ctx.smoke else 150.0
        for concurrency, reps in ((1, ctx.reps(Reps(4, 10, 30), Reps(2, 2, 0))),
                                  (16, ctx.reps(Reps(2, 3, 60), Reps(1, 1, 0)))):
            got: dict[str, list[dict[str, Any]]] = {"direct": [], "router": []}
            names = list(sides)
            started = time.monotonic()
            cut = ""
            for i in range(reps.max):
                elapsed = time.monotonic() - started
                if i >= reps.min and elapsed > reps.budget_s:
                    break
                if i >= 1 and elapsed > hard_cap_s:
                    cut = f"cut after {i} repetitions ({elapsed:.0f} s, machine too busy)"
                    break
                order = names if i % 2 == 0 else names[::-1]
                for name in order:
                    client, url, headers, watch = sides[name]
                    pid = server.pid if name == "router" else bare.pid
                    c0 = cpu_s(pid)
                    try:
                        batch = await asyncio.wait_for(
                            _batch(client, url, headers, body(max_tokens), concurrency,
                                   watch if concurrency > 1 else None, watcher), batch_cap_s)
                    except asyncio.TimeoutError:
                        cut = f"a {name} batch took over {batch_cap_s:.0f} s and was dropped"
                        break
                    batch["cpu_per_token_ms"] = (cpu_s(pid) - c0) * 1000 / sum(batch["tokens"])
                    got[name].append(batch)
                if cut:
                    break
            if cut:
                ctx.notes.append(f"Streaming c={concurrency}: {cut}.")
            if not got["direct"] or not got["router"]:
                continue
            ctx.raw[f"streaming_c{concurrency}"] = got
            tok = {k: [b["tok_s"] for b in v] for k, v in got.items()}
            ttft = {k: [t for b in v for t in b["ttft_ms"]] for k, v in got.items()}
            counts = sorted({t for v in got.values() for b in v for t in b["tokens"]})
            busy = {k: max(b["slots_busy"] for b in v) for k, v in got.items()}
            retries = {k: int(sum(b["retries"] for b in v)) for k, v in got.items()}
            note = (f"{max_tokens}-token streams; tokens per stream seen: {counts}; client "
                    f"retries on a connection closed by the server: direct {retries['direct']},"
                    f" router {retries['router']}")
            if concurrency > 1:
                note += (f"; backend slots (--parallel auto): {props.get('total_slots')}, most "
                         f"busy at once: direct {busy['direct']}, router {busy['router']}")
            ctx.add(Row(S2, f"throughput c={concurrency} (all streams)", "tok/s", "direct",
                        tok["direct"], "router", tok["router"], "median",
                        Target("min_ratio", 0.97, "≥ 0.97×"), note=note))
            ctx.add(Row(S2, f"time to first token c={concurrency}", "ms", "direct",
                        ttft["direct"], "router", ttft["router"], "median",
                        Target("max_diff", 2.0, "≤ +2 ms")))
            per_tok = {k: [b["cpu_per_token_ms"] for b in v] for k, v in got.items()}
            ctx.add(Row(S2, f"CPU time per streamed token c={concurrency}", "ms",
                        "bare llama-server process", per_tok["direct"],
                        "Jupyter server process (router)", per_tok["router"], "median",
                        note="CPU of the serving process during each batch / tokens"))
            ctx.sample_load()


def run_streaming(ctx: Context, server: JupyterServer, bare: BareLlama) -> None:
    asyncio.run(_streaming(ctx, server, bare))


# ---------------------------------------------------------------------------------- attribution
class _RawHTTP:
    """The least a Python client can do per request: one keep-alive HTTP/1.1 connection on
    asyncio streams, request head and body in one write, Content-Length bodies only."""

    def __init__(self, port: int) -> None:
        self._port = port
        self._io: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def post(self, path: str, headers: dict[str, str], body: bytes) -> bytes:
        for attempt in (1, 2):
            if self._io is None:
                self._io = await asyncio.open_connection("127.0.0.1", self._port)
            reader, writer = self._io
            head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
            writer.write(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{self._port}\r\n{head}"
                         f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            status = await reader.readline()
            if not status:  # the server closed the idle connection: reconnect once
                writer.close()
                self._io = None
                if attempt == 1:
                    continue
                raise BenchmarkError("raw client: connection closed")
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            payload = await reader.readexactly(length)
            if b" 200 " not in status:
                raise BenchmarkError(f"raw client: {status!r} {payload[:200]!r}")
            return payload
        raise AssertionError("unreachable")

    async def stream(self, path: str, headers: dict[str, str], body: bytes) -> int:
        """POST and read a chunked SSE answer to the end; returns the number of events.

        On a fresh connection, closed afterwards: llama-server closes it after a stream."""
        if self._io is not None:
            self._io[1].close()
        self._io = await asyncio.open_connection("127.0.0.1", self._port)
        reader, writer = self._io
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        writer.write(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{self._port}\r\n{head}"
                     f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        status = await reader.readline()
        chunked = False
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        if b" 200 " not in status or not chunked:
            raise BenchmarkError(f"raw stream: {status!r}, chunked={chunked}")
        events = 0
        while True:
            size = int((await reader.readline()).split(b";")[0], 16)
            data = await reader.readexactly(size + 2)
            if size == 0:
                break
            events += data.count(b"\n\n")
        writer.close()  # llama-server closes the connection after a stream
        self._io = None
        return events

    def close(self) -> None:
        if self._io is not None:
            self._io[1].close()


async def _client_cpu(ctx: Context, bare: BareLlama, n: int, rounds: int
                      ) -> dict[str, list[float]]:
    """CPU per request (and per streamed event) of three upstream clients, interleaved."""
    from lemonade_jupyter.server.upstream import UpstreamPool

    body = json.dumps({"model": DEFAULT_MODEL, "messages": PROMPT, "max_tokens": 1,
                       "temperature": 0}).encode()
    headers = {**bare.headers, "Content-Type": "application/json"}
    # httpx as the router used it before the proxy got its own pool.
    hx = httpx.AsyncClient(limits=httpx.Limits(max_connections=512, max_keepalive_connections=64),
                           timeout=httpx.Timeout(None, connect=5.0))
    pool = UpstreamPool()
    raw = _RawHTTP(bare.port)
    path = "/v1/chat/completions"
    url = bare.url + path

    async def via_httpx() -> None:
        (await hx.post(url, content=body, headers=headers)).raise_for_status()

    async def via_pool() -> None:
        r = await pool.post("127.0.0.1", bare.port, path, body, headers)
        if r.code != 200:
            raise BenchmarkError(f"pool: {r.code} {r.body[:200]!r}")

    async def via_raw() -> None:
        await raw.post(path, bare.headers, body)

    stream_body = json.dumps({"model": DEFAULT_MODEL, "messages": PROMPT, "temperature": 0,
                              "max_tokens": 16 if ctx.smoke else 128, "stream": True,
                              "ignore_eos": True}).encode()
    # llama-server closes the connection after a stream: no client reuses it.
    close = {**headers, "Connection": "close"}

    async def stream_httpx() -> int:
        events = 0
        async with hx.stream("POST", url, content=stream_body, headers=close) as r:
            async for chunk in r.aiter_raw():
                events += chunk.count(b"\n\n")
        return events

    async def stream_pool() -> int:
        events = 0
        resp = await pool.stream("127.0.0.1", bare.port, path, stream_body, close)
        try:
            async for chunk in resp:  # what the proxy reads
                events += chunk.count(b"\n\n")
        finally:
            await resp.aclose()
        return events

    async def stream_raw() -> int:
        return await raw.stream(path, {**bare.headers, "Connection": "close"}, stream_body)

    plain = {"raw": via_raw, "pool": via_pool, "httpx": via_httpx}
    streamed = {"raw_stream": stream_raw, "pool_stream": stream_pool,
                "httpx_stream": stream_httpx}
    out: dict[str, list[float]] = {name: [] for name in (*plain, *streamed)}
    try:
        for fn in plain.values():
            for _ in range(3):
                await fn()
        for i in range(rounds):
            order = list(plain.items())
            for name, fn in (order if i % 2 == 0 else order[::-1]):
                c0 = time.thread_time()
                for _ in range(n):
                    await fn()
                out[name].append((time.thread_time() - c0) * 1000 / n)
        for i in range(max(2, rounds // 2)):
            sorder = list(streamed.items())
            for name, sfn in (sorder if i % 2 == 0 else sorder[::-1]):
                c0 = time.thread_time()
                events = await sfn()
                out[name].append((time.thread_time() - c0) * 1000 / max(events, 1))
    finally:
        raw.close()
        pool.close()
        await hx.aclose()
    return out


PER_REQUEST_NOTE = "in the benchmark process, same backend, thread CPU time / requests"
PER_EVENT_NOTE = "in the benchmark process; llama-server sends about one event per token"


def run_attribution(ctx: Context, server: JupyterServer, bare: BareLlama) -> None:
    """Where the proxy's time goes, in CPU time (robust to a shared machine).

    The Jupyter server's CPU per request for its cheapest authenticated call vs a proxied chat;
    and, in this process, the CPU per request of the proxy's upstream pool vs a raw asyncio
    HTTP/1.1 request to the same backend, and vs httpx (the client the proxy used before).
    """
    n, rounds = (20, 3) if ctx.smoke else (20, 5)
    body = json.dumps({"model": DEFAULT_MODEL, "messages": PROMPT, "max_tokens": 1,
                       "temperature": 0}).encode()
    per_req: dict[str, list[float]] = {"status": [], "chat": []}
    with httpx.Client(timeout=60) as client:
        def status() -> None:
            client.get(server.url + "api/status", headers=server.headers).raise_for_status()

        def chat() -> None:
            _check_chat(client.post(server.api("api/v1/chat/completions"), content=body,
                                    headers=server.headers), "router")

        for fn in (status, chat):
            fn()
        for i in range(rounds):
            pairs = [("status", status), ("chat", chat)]
            for name, fn in (pairs if i % 2 == 0 else pairs[::-1]):
                c0 = cpu_s(server.pid)
                for _ in range(n):
                    fn()
                per_req[name].append((cpu_s(server.pid) - c0) * 1000 / n)
    clients = asyncio.run(_client_cpu(ctx, bare, n, rounds))
    ctx.raw["attribution_cpu_ms"] = {"server": per_req, "client": clients}
    ctx.add(Row(S1, "where it goes: Jupyter server CPU per request", "ms",
                "GET /api/status (Jupyter's floor)", per_req["status"],
                "POST chat through the router", per_req["chat"], "median",
                note=f"{rounds} rounds of {n} requests; process CPU time / requests"))
    ctx.add(Row(S1, "where it goes: upstream client CPU per request", "ms",
                "raw asyncio HTTP/1.1", clients["raw"],
                "UpstreamPool (the proxy's client, aiohttp)", clients["pool"], "median",
                note=PER_REQUEST_NOTE))
    ctx.add(Row(S1, "where it goes: upstream client CPU per request, before", "ms",
                "httpx.AsyncClient (an earlier client of the proxy)", clients["httpx"],
                "UpstreamPool (the proxy's client, aiohttp)", clients["pool"], "median",
                note=PER_REQUEST_NOTE))
    ctx.add(Row(S2, "where it goes: upstream client CPU per SSE event", "ms",
                "raw asyncio HTTP/1.1, chunked", clients["raw_stream"],
                "UpstreamPool stream (what the proxy reads, aiohttp)", clients["pool_stream"], "median",
                note=PER_EVENT_NOTE))
    ctx.add(Row(S2, "where it goes: upstream client CPU per SSE event, before", "ms",
                "httpx aiter_raw (an earlier client of the proxy)", clients["httpx_stream"],
                "UpstreamPool stream (what the proxy reads, aiohttp)", clients["pool_stream"], "median",
                note=PER_EVENT_NOTE))
    json_ms, bytes_ms = _rename_cost_ms()
    ctx.add(Row(S2, "where it goes: proxy's model-name rewrite per SSE event", "ms",
                "json.loads + json.dumps of the event (before)", [json_ms],
                "on the bytes (answers.Renamer)", [bytes_ms], "median"))


def _rename_cost_ms() -> tuple[float, float]:
    """CPU of renaming ``model`` in a typical llama-server chunk: through JSON, on the bytes."""
    from lemonade_jupyter.server.answers import Renamer, rewrite_model

    event = (b'data: {"choices":[{"finish_reason":null,"index":0,"delta":{"content":" hi"}}],'
             b'"created":1795791860,"id":"chatcmpl-3XEg4Z2TPjJ8CZz28KgyX8cy0xAD2NaI","model":'
             b'"/home/user/models/SmolLM2-135M-Instruct.Q4_1.gguf","system_fingerprint":'
             b'"b1-0c1e570","object":"chat.completion.chunk"}\n\n')
    rename = Renamer(DEFAULT_MODEL)
    n = 2000
    c0 = time.thread_time()
    for _ in range(n):
        b"data: " + rewrite_model(event[6:-2], DEFAULT_MODEL) + b"\n\n"
    c1 = time.thread_time()
    for _ in range(n):
        rename(event)
    c2 = time.thread_time()
    return (c1 - c0) * 1000 / n, (c2 - c1) * 1000 / n
