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

from .common import PROMPT, Context, Reps, interleaved
from .procs import BareLlama, BenchmarkError, JupyterServer, backend_api_key, cpu_s
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
    with httpx.Client(timeout=60) as direct, httpx.Client(timeout=60) as routed, \
            httpx.Client(timeout=60) as control:
        r = routed.post(server.api("api/v1/load"), headers=server.headers,
                        json={"model_name": DEFAULT_MODEL})
        if r.status_code != 200:
            raise BenchmarkError(f"/load failed: {r.status_code} {r.text[:300]}")
        ctl = _router_backend(server, routed)

        def arm(client: httpx.Client, url: str, headers: dict[str, str], where: str):
            def once() -> float:
                t0 = time.perf_counter()
                resp = client.post(url, content=body, headers=headers)
                dt = (time.perf_counter() - t0) * 1000
                _check_chat(resp, where)
                return dt
            return once

        arms = {
            "direct": arm(direct, bare.url + "/v1/chat/completions", bare.headers, "direct"),
            "router": arm(routed, server.api("api/v1/chat/completions"), server.headers,
                          "router"),
        }
        if ctl is not None:
            arms["control"] = arm(control, ctl[0] + "/v1/chat/completions", ctl[1], "control")
        interleaved(arms, ctx.reps(Reps(5, 5, 0), Reps(2, 2, 0)))  # warm-up: cache, connections
        cpu0 = {"server": cpu_s(server.pid), "bare": cpu_s(bare.pid)}
        got = interleaved(arms, ctx.reps(Reps(200, 400, 60), Reps(8, 8, 0)))
        cpu = {k: (cpu_s(pid) - cpu0[k]) * 1000 / len(got["router"])
               for k, pid in (("server", server.pid), ("bare", bare.pid))}
    ctx.raw["nonstreaming_ms"] = got
    ctx.add(Row(S1, "latency p50, max_tokens 1", "ms", "direct", got["direct"],
                "router", got["router"], "median",
                Target("max_diff", 1.0, "≤ +1 ms")))
    ctx.add(Row(S1, "latency p95, max_tokens 1", "ms", "direct", got["direct"],
                "router", got["router"], "p95",
                Target("max_diff", 3.0, "≤ +3 ms")))
    ctx.add(Row(S1, "CPU time per request", "ms", "bare llama-server process", [cpu["bare"]],
                "Jupyter server process (router)", [cpu["server"]], "median",
                note="process CPU (user+sys) over the run / requests: what the proxy costs "
                     "the 2 cores, independent of scheduling noise"))
    if "control" in got:
        ctx.add(Row(S1, "control: proxy alone (p50)", "ms", "router's backend direct",
                    got["control"], "router", got["router"], "median",
                    note="same backend process on both sides"))
        ctx.add(Row(S1, "control: bare vs router's backend (p50)", "ms", "bare llama-server",
                    got["direct"], "router's backend direct", got["control"], "median",
                    note="two llama-server instances, no proxy"))
    else:
        ctx.notes.append("Control arm skipped: the router backend's key was not readable.")


# ---------------------------------------------------------------------------------- streaming
async def _stream(client: httpx.AsyncClient, url: str, headers: dict[str, str],
                  body: bytes) -> dict[str, float]:
    t0 = time.perf_counter()
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
            "start": t0, "end": end}


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
            "tokens": [r["tokens"] for r in results], "slots_busy": busy}


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
        for concurrency, reps in ((1, ctx.reps(Reps(6, 10, 45), Reps(2, 2, 0))),
                                  (16, ctx.reps(Reps(2, 4, 100), Reps(1, 1, 0)))):
            got: dict[str, list[dict[str, Any]]] = {"direct": [], "router": []}
            names = list(sides)
            cpu0 = {"server": cpu_s(server.pid), "bare": cpu_s(bare.pid)}
            started = time.monotonic()
            for i in range(reps.max):
                if i >= reps.min and time.monotonic() - started > reps.budget_s:
                    break
                order = names if i % 2 == 0 else names[::-1]
                for name in order:
                    client, url, headers, watch = sides[name]
                    got[name].append(await _batch(client, url, headers, body(max_tokens),
                                                  concurrency, watch if concurrency > 1 else None,
                                                  watcher))
            cpu = {"server": cpu_s(server.pid) - cpu0["server"],
                   "bare": cpu_s(bare.pid) - cpu0["bare"]}
            ctx.raw[f"streaming_c{concurrency}"] = got
            tok = {k: [b["tok_s"] for b in v] for k, v in got.items()}
            ttft = {k: [t for b in v for t in b["ttft_ms"]] for k, v in got.items()}
            counts = sorted({t for v in got.values() for b in v for t in b["tokens"]})
            busy = {k: max(b["slots_busy"] for b in v) for k, v in got.items()}
            note = f"{max_tokens}-token streams; tokens per stream seen: {counts}"
            if concurrency > 1:
                note += (f"; backend slots (--parallel auto): {props.get('total_slots')}, most "
                         f"busy at once: direct {busy['direct']}, router {busy['router']}")
            ctx.add(Row(S2, f"throughput c={concurrency} (all streams)", "tok/s", "direct",
                        tok["direct"], "router", tok["router"], "median",
                        Target("min_ratio", 0.97, "≥ 0.97×"), note=note))
            ctx.add(Row(S2, f"time to first token c={concurrency}", "ms", "direct",
                        ttft["direct"], "router", ttft["router"], "median",
                        Target("max_diff", 2.0, "≤ +2 ms")))
            per_tok = {k: 1000 * cpu[k] / sum(t for b in got[side] for t in b["tokens"])
                       for k, side in (("server", "router"), ("bare", "direct"))}
            ctx.add(Row(S2, f"CPU time per streamed token c={concurrency}", "ms",
                        "bare llama-server process", [per_tok["bare"]],
                        "Jupyter server process (router)", [per_tok["server"]], "median"))
            ctx.sample_load()


def run_streaming(ctx: Context, server: JupyterServer, bare: BareLlama) -> None:
    asyncio.run(_streaming(ctx, server, bare))
