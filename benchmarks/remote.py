"""Section 9: what the router adds in front of a remote model's replica.

A bare ``llama-server`` (the router's own command line) stands in for a remote serving engine
with an API key. It is registered with the Jupyter server as a remote model (``recipe:
"remote"``, the key in an environment variable of the server), and the same request goes to it
directly and through ``lemonade/api/v1/chat/completions``, alternating, on keep-alive clients.
Both arms end at the same process, so the difference is the router's remote path alone (replica
choice, body rewrite, aiohttp with TLS settings and timeouts, the answer's rename). The targets
are those of the local proxy (section 1 and 2).
"""

from __future__ import annotations

import asyncio
import json
import os
import time

import httpx

from .common import PROMPT, Context, Reps, interleaved
from .procs import BareLlama, BenchmarkError, JupyterServer
from .proxy import _stream
from .report import Row, Target

S9 = "9. Remote model (a replica behind the router)"
#: The environment variable that holds the replica's key, in the Jupyter server's environment.
KEY_ENV = "LEMONADE_REMOTE_KEY_BENCH"  # a name the router lends by default (remote_key_envs)
NAME = "user.bench-remote"


def prepare_key() -> None:
    """Put a key in our environment before the Jupyter server starts (it inherits it)."""
    os.environ.setdefault(KEY_ENV, "sk-bench-" + os.urandom(12).hex())


def _check(r: httpx.Response, where: str) -> None:
    if r.status_code != 200 or not r.json().get("choices"):
        raise BenchmarkError(f"{where}: HTTP {r.status_code}: {r.text[:300]}")


def run_remote(ctx: Context, server: JupyterServer) -> None:
    bare = BareLlama(ctx.llama_server, ctx.model_file, ctx.tmp)
    bare.api_key = os.environ[KEY_ENV]
    bare.start()
    try:
        _measure(ctx, server, bare)
    finally:
        bare.stop()


def _measure(ctx: Context, server: JupyterServer, bare: BareLlama) -> None:
    with httpx.Client(timeout=60) as direct, httpx.Client(timeout=60) as routed:
        r = routed.post(server.api("api/v1/pull"), headers=server.headers, json={
            "model_name": NAME, "recipe": "remote", "base_url": bare.url + "/v1",
            "upstream_model": "smollm2", "api_key_env": KEY_ENV})
        if r.status_code != 200 or r.json()["registered"][0]["status"] != "ready":
            raise BenchmarkError(f"remote /pull: {r.status_code} {r.text[:300]}")

        def arm(client: httpx.Client, url: str, headers: dict[str, str], model: str,
                where: str):
            body = json.dumps({"model": model, "messages": PROMPT, "max_tokens": 1,
                               "temperature": 0}).encode()

            def once() -> float:
                t0 = time.perf_counter()
                resp = client.post(url, content=body, headers=headers)
                dt = (time.perf_counter() - t0) * 1000
                _check(resp, where)
                return dt
            return once

        arms = {
            "direct": arm(direct, bare.url + "/v1/chat/completions", bare.headers, "smollm2",
                          "direct"),
            "router": arm(routed, server.api("api/v1/chat/completions"), server.headers, NAME,
                          "router"),
        }
        interleaved(arms, ctx.reps(Reps(5, 5, 0), Reps(2, 2, 0)))  # warm-up
        got = interleaved(arms, ctx.reps(Reps(60, 400, 60), Reps(8, 8, 0)))
    ttft = asyncio.run(_ttft(ctx, server, bare))
    ctx.raw["remote_nonstreaming_ms"] = got
    ctx.raw["remote_ttft_ms"] = ttft
    ctx.add(Row(S9, "latency p50, max_tokens 1", "ms", "replica direct", got["direct"],
                "router → remote replica", got["router"], "median",
                Target("max_diff", 1.0, "≤ +1 ms"),
                note="same llama-server process on both sides, with its API key"))
    ctx.add(Row(S9, "latency p95, max_tokens 1", "ms", "replica direct", got["direct"],
                "router → remote replica", got["router"], "p95",
                Target("max_diff", 3.0, "≤ +3 ms")))
    ctx.add(Row(S9, "time to first token c=1", "ms", "replica direct", ttft["direct"],
                "router → remote replica", ttft["router"], "median",
                Target("max_diff", 2.0, "≤ +2 ms")))
    ctx.sample_load()


async def _ttft(ctx: Context, server: JupyterServer, bare: BareLlama) -> dict[str, list[float]]:
    """Streams of 16 tokens, alternating direct and routed; their times to first token."""
    def body(model: str) -> bytes:
        return json.dumps({"model": model, "messages": PROMPT, "max_tokens": 16,
                           "temperature": 0, "stream": True}).encode()

    sides = {
        "direct": (bare.url + "/v1/chat/completions", bare.headers, body("smollm2")),
        "router": (server.api("api/v1/chat/completions"), server.headers, body(NAME)),
    }
    reps = ctx.reps(Reps(20, 200, 40), Reps(3, 3, 0))
    out: dict[str, list[float]] = {"direct": [], "router": []}
    started = time.monotonic()
    async with httpx.AsyncClient(timeout=60) as client:
        for name in ("direct", "router"):  # warm-up
            await _stream(client, *sides[name])
        for i in range(reps.max):
            if i >= reps.min and time.monotonic() - started > reps.budget_s:
                break
            for name in (("direct", "router") if i % 2 == 0 else ("router", "direct")):
                out[name].append((await _stream(client, *sides[name]))["ttft_ms"])
    return out
