"""Section 7: the proxy at GPU speed, against a backend that streams as fast as asked.

A real llama-server on these CPUs makes a token every 10–25 ms, which hides what the proxy
spends per token; a GPU makes one every 2–4 ms. Here the backend is ``benchmarks.fast_upstream``
(a stand-in that streams OpenAI-shaped SSE at a set rate, in a process of its own): the
baseline is one started by hand, the subject the same program run by the router of a Jupyter
server of its own (``llama_server_path`` points at it), reached through
``lemonade/api/v1/chat/completions``. The load client (``benchmarks.sse_load``) counts events
in raw bytes, so it keeps up with both.

Rows: tokens per second of each stream (first token to last) at 250, 1,000 and 4,000 tokens/s
per stream and concurrency 1, 16 and 64; the Jupyter server's CPU per streamed token; time to
first token; a plain request's latency; and what one core of the Jupyter server sustains:
tokens per second of its CPU time while 64 streams at 4,000 tokens/s ask far more than it can
relay (at that point every core-second it gets goes into relaying).

The time to first token has a third arm, in the same rotation: a second Jupyter server with
``warm_stream_connections = 0``, whose streams each connect to the backend themselves, as every
stream did before the proxy opened the next stream's connection ahead (``warm_connections.py``).
Its row shows what that saves, measured side by side on the same machine and load.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import time
from typing import Any

import httpx

from lemonade_jupyter.core.catalog import DEFAULT_MODEL

from .common import Context, Reps, interleaved_by_backend
from .procs import BenchmarkError, FastUpstream, JupyterServer, cpu_s
from .profiling import PySpy
from .report import Row, Target
from .sse_load import PlainClient, StreamClient, StreamResult

S7 = "7. Fast upstream"
RATES = (250, 1000, 4000)
CONCURRENCY = (1, 16, 64)
#: The configuration the targets are stated at.
TARGET_RATE, TARGET_C = 1000, 1
#: The load that saturates the Jupyter server: 64 streams asking 4,000 tokens/s each.
SATURATING = (4000, 64)
CHAT = "api/v1/chat/completions"


def _tokens(rate: int, concurrency: int, smoke: bool) -> int:
    """Tokens per stream: half a second at ``rate``, at most 32,000 per batch."""
    if smoke:
        return 200
    return int(min(rate / 2, 32000 / concurrency))


def _body(tokens: int, rate: float, stream: bool = True) -> bytes:
    return json.dumps({"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": "Hi"}],
                       "max_tokens": tokens, "stream": stream,
                       "x_tokens_per_s": rate}).encode()


def _path(server: JupyterServer, route: str) -> str:
    return server.api(route)[len(server.url) - 1:]


class _Side:
    """One arm: a client, the path it posts to and the process whose CPU it reports."""

    def __init__(self, client: StreamClient, path: str, pid: int) -> None:
        self.client, self.path, self.pid = client, path, pid

    async def batch(self, body: bytes, concurrency: int) -> dict[str, Any]:
        c0, t0 = cpu_s(self.pid), time.perf_counter()
        results: list[StreamResult] = await asyncio.gather(
            *(self.client.stream(self.path, body) for _ in range(concurrency)))
        wall = max(r.end for r in results) - t0
        tokens = sum(r.tokens for r in results)
        cpu = cpu_s(self.pid) - c0
        return {"rates": [r.rate for r in results], "ttft_ms": [r.ttft_ms for r in results],
                "tokens": tokens, "aggregate": tokens / wall, "cpu_ms_per_token":
                cpu * 1000 / tokens, "cpu_share": cpu / wall,
                "reads_per_token": sum(r.reads for r in results) / tokens}


async def _streaming(ctx: Context, direct: _Side, routed: _Side, connecting: _Side,
                     configs: list[tuple[int, int]]
                     ) -> dict[tuple[int, int], dict[str, list[dict[str, Any]]]]:
    out: dict[tuple[int, int], dict[str, list[dict[str, Any]]]] = {}
    sides = {"direct": direct, "router": routed}
    first = {**sides, "connecting": connecting}
    for _ in range(2 if ctx.smoke else 20):  # warm-up: connections, first-request paths
        for side in first.values():
            await side.batch(_body(50, 5000), 4)
    # Time to first token: many short streams, rotating, each after one to another side.
    reps = ctx.reps(Reps(100, 300, 25), Reps(10, 10, 0))
    ttft: dict[str, list[dict[str, Any]]] = {name: [] for name in first}
    names = list(first)
    started = time.monotonic()
    for i in range(reps.max):
        if i >= reps.min and time.monotonic() - started > reps.budget_s:
            break
        for name in names[i % 3:] + names[:i % 3]:
            ttft[name].append(await first[name].batch(_body(16, TARGET_RATE), 1))
    out[(0, 0)] = ttft
    for rate, concurrency in configs:
        body = _body(_tokens(rate, concurrency, ctx.smoke), rate)
        reps = ctx.reps(Reps(5, 9, 12) if concurrency == 1 else Reps(3, 3, 20),
                        Reps(2, 2, 0))
        got: dict[str, list[dict[str, Any]]] = {"direct": [], "router": []}
        started = time.monotonic()
        for i in range(reps.max):
            if i >= reps.min and time.monotonic() - started > reps.budget_s:
                break
            order = list(sides) if i % 2 == 0 else list(sides)[::-1]
            for name in order:
                got[name].append(await sides[name].batch(body, concurrency))
        out[(rate, concurrency)] = got
        ctx.sample_load()
    return out


def _profiled(ctx: Context, server: JupyterServer, part: str
              ) -> contextlib.AbstractContextManager[Any]:
    if ctx.profile_dir is None:
        return contextlib.nullcontext()
    ctx.profile_dir.mkdir(parents=True, exist_ok=True)
    return PySpy(server.pid, ctx.profile_dir / f"profile-7-{part}.raw")


def _flat(batches: list[dict[str, Any]], key: str) -> list[float]:
    return [v for b in batches for v in b[key]]


def _each(batches: list[dict[str, Any]], key: str) -> list[float]:
    return [b[key] for b in batches]


def run_fast(ctx: Context) -> None:
    root = ctx.tmp / "fast"
    root.mkdir(parents=True, exist_ok=True)
    bare = FastUpstream(root)
    traits = {"llama_server_path": FastUpstream.launcher(root), "max_loaded_models": -1,
              "restore_on_start": False, "memory_sample_interval_s": 3600}
    server = JupyterServer(root, traits, name="jupyter-fast")
    # The same, each stream connecting to its backend itself (no connection opened ahead).
    (root / "connecting").mkdir(exist_ok=True)
    connecting = JupyterServer(root / "connecting", {**traits, "warm_stream_connections": 0},
                               name="jupyter-fast-connecting")
    left: list[int] = []
    try:
        bare.start()
        for one in (server, connecting):
            one.start()
            with httpx.Client(timeout=60) as client:
                r = client.post(one.api("api/v1/load"), headers=one.headers,
                                json={"model_name": DEFAULT_MODEL})
                if r.status_code != 200:
                    raise BenchmarkError(f"/load failed: {r.status_code} {r.text[:300]}")
        time.sleep(2)  # let the server's own start-up work (extensions, the load) settle
        direct = _Side(StreamClient(bare.port, bare.headers, reuse=False),
                       "/v1/chat/completions", bare.pid)
        routed = _Side(StreamClient(server.port, server.headers), _path(server, CHAT),
                       server.pid)
        routed_connecting = _Side(StreamClient(connecting.port, connecting.headers),
                                  _path(connecting, CHAT), connecting.pid)
        configs = ([(TARGET_RATE, TARGET_C)] if ctx.smoke else
                   [(r, c) for c in CONCURRENCY for r in RATES])
        stand_in = bare.stats()
        with _profiled(ctx, server, "streaming"):
            got = asyncio.run(_streaming(ctx, direct, routed, routed_connecting, configs))
        stand_in = {k: v - stand_in.get(k, 0) for k, v in bare.stats().items()}
        left += connecting.stop()
        with _profiled(ctx, server, "plain"):
            _plain(ctx, server, bare)
    finally:
        bare.stop()
        left += connecting.stop() + server.stop()
    if left:
        raise BenchmarkError(f"backends left running after the server stopped: {left}")
    ttft = got.pop((0, 0))
    ctx.raw["fast_streaming"] = {f"{r}x{c}": v for (r, c), v in got.items()}
    ctx.raw["fast_ttft"] = ttft
    ctx.add(Row(S7, f"time to first token, {TARGET_RATE} tok/s, c=1", "ms", "direct",
                _flat(ttft["direct"], "ttft_ms"), "router", _flat(ttft["router"], "ttft_ms"),
                "median", Target("max_diff", 1.5, "≤ +1.5 ms"),
                note="16-token streams, one at a time, direct and the two routers rotating; "
                     "request sent to first token read"))
    ctx.add(Row(S7, f"time to first token, {TARGET_RATE} tok/s, c=1: connection opened ahead",
                "ms", "router, each stream connecting (warm_stream_connections = 0)",
                _flat(ttft["connecting"], "ttft_ms"), "router (connection opened ahead)",
                _flat(ttft["router"], "ttft_ms"), "median",
                note="the same streams, in the same rotation: a second Jupyter server whose "
                     "streams each open their backend connection"))
    ctx.add(Row(S7, "Jupyter server CPU per short stream", "ms", "the stand-in's process "
                "(direct)", [b["cpu_ms_per_token"] * b["tokens"] for b in ttft["direct"]],
                "Jupyter server process (router)",
                [b["cpu_ms_per_token"] * b["tokens"] for b in ttft["router"]], "median",
                note="the same 16-token streams: a stream's whole cost, request to end"))
    for (rate, concurrency), sides in got.items():
        d, s = sides["direct"], sides["router"]
        is_target = (rate, concurrency) == (TARGET_RATE, TARGET_C)
        reads = statistics.median(_each(s, "reads_per_token"))
        ctx.add(Row(S7, f"tokens/s per stream, {rate} tok/s, c={concurrency}", "tok/s",
                    "direct", _flat(d, "rates"), "router", _flat(s, "rates"), "median",
                    Target("min_ratio", 0.97, "≥ 0.97×") if is_target else None,
                    note=f"{_tokens(rate, concurrency, ctx.smoke)}-token streams, first token "
                         f"to last; the load client read {reads:.2f} times per token through "
                         "the router"))
        ctx.add(Row(S7, f"CPU per streamed token, {rate} tok/s, c={concurrency}", "ms",
                    "the stand-in's process (direct)", _each(d, "cpu_ms_per_token"),
                    "Jupyter server process (router)", _each(s, "cpu_ms_per_token"), "median",
                    Target("max_value", 0.1, "≤ 0.1 ms") if is_target else None,
                    note="process CPU during each batch / tokens"))
    if SATURATING in got:
        d, s = got[SATURATING]["direct"], got[SATURATING]["router"]
        share = statistics.median(_each(s, "cpu_share"))
        ctx.add(Row(S7, "aggregate tokens/s, 64 streams asking 4,000 tok/s", "tok/s",
                    "direct", _each(d, "aggregate"), "router (wall clock)",
                    _each(s, "aggregate"), "median",
                    note=f"the Jupyter server used {share:.2f} of a core meanwhile"))
        per_core = [b["aggregate"] / b["cpu_share"] for b in s]
        ctx.add(Row(S7, "tokens/s one Jupyter server core sustains", "tok/s",
                    "router (wall clock)", _each(s, "aggregate"),
                    "router, per second of its CPU time", per_core, "median",
                    Target("min_value", 10000, "≥ 10,000"),
                    note="64 streams asking 4,000 tok/s each: more than one core can relay, so "
                         "the server relays as much as its CPU allows; tokens / its CPU time"))
    ctx.notes.append(
        "Section 7's stand-in (benchmarks/fast_upstream.py) sent "
        f"{stand_in.get('tokens', 0)} tokens in {stand_in.get('writes', 0)} writes to the direct "
        "arm; its direct rows show it kept the rate it was asked for.")


def _plain(ctx: Context, server: JupyterServer, bare: FastUpstream) -> None:
    """Plain (non-streamed) requests, 16 tokens answered at once, direct vs router."""
    body = _body(16, 1e6, stream=False)
    direct = PlainClient(bare.port, bare.headers)
    routed = PlainClient(server.port, server.headers)
    router_path = _path(server, CHAT)
    cpu: list[float] = []

    def arm(client: PlainClient, path: str, pid: int | None = None):
        def once() -> float:
            c0 = cpu_s(pid) if pid else 0.0
            t0 = time.perf_counter()
            client.post(path, body)
            dt = (time.perf_counter() - t0) * 1000
            if pid:
                cpu.append((cpu_s(pid) - c0) * 1000)
            return dt
        return once

    groups = [(arm(direct, "/v1/chat/completions"),
               {"direct": arm(direct, "/v1/chat/completions")}),
              (arm(routed, router_path), {"router": arm(routed, router_path, server.pid)})]
    try:
        interleaved_by_backend(groups, Reps(50, 50, 0))  # warm-up
        cpu.clear()
        got = interleaved_by_backend(groups, ctx.reps(Reps(100, 400, 25), Reps(10, 10, 0)))
    finally:
        direct.close()
        routed.close()
    ctx.raw["fast_plain_ms"] = got
    ctx.add(Row(S7, "plain request latency p50, 16 tokens", "ms", "direct", got["direct"],
                "router", got["router"], "median", Target("max_diff", 1.5, "≤ +1.5 ms")))
    ctx.add(Row(S7, "Jupyter server CPU per plain request", "ms", "—", [],
                "Jupyter server process (router)", cpu, "median"))
