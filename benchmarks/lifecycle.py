"""Sections 3 and 4: cold load and swap, the router vs starting ``llama-server`` by hand.

Cold load: ``POST lemonade/api/v1/load`` of the default model until it answers (the model is
ready) vs a bare start of the same file with the same flags until ``/health`` answers 200,
polled every 5 ms. The router's own ``load_duration_ms`` (spawn to ready, inside the router) is
kept beside it to split the difference into readiness polling and HTTP/routing.

Swap: with ``max_loaded_models`` 1 and two user models on the same GGUF, requests alternate
between them so each one evicts the other and starts it again; the baseline is a bare
stop-and-start (SIGTERM and wait, start, ``/health`` 200) followed by the same request.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx

from lemonade_jupyter.core.catalog import DEFAULT_MODEL

from .common import PROMPT, Context, Reps, interleaved
from .procs import BareLlama, BenchmarkError, JupyterServer
from .report import Row, Target

S3 = "3. Cold load"
S4 = "4. Swap"


def post_ok(client: httpx.Client, server: JupyterServer, path: str, body: dict[str, Any]
            ) -> dict[str, Any]:
    r = client.post(server.api(path), headers=server.headers, json=body)
    if r.status_code != 200:
        raise BenchmarkError(f"POST {path} {body}: HTTP {r.status_code}: {r.text[:300]}")
    return r.json()  # type: ignore[no-any-return]


def health(client: httpx.Client, server: JupyterServer) -> dict[str, Any]:
    r = client.get(server.api("api/v1/health"), headers=server.headers)
    if r.status_code != 200:
        raise BenchmarkError(f"/health: HTTP {r.status_code}")
    return r.json()  # type: ignore[no-any-return]


def loaded(client: httpx.Client, server: JupyterServer) -> dict[str, dict[str, Any]]:
    return {m["model_name"]: m for m in health(client, server)["all_models_loaded"]}


def chat_body(model: str) -> bytes:
    return json.dumps({"model": model, "messages": PROMPT, "max_tokens": 1,
                       "temperature": 0}).encode()


def chat(client: httpx.Client, url: str, headers: dict[str, str], model: str) -> float:
    """One ``max_tokens: 1`` chat; returns milliseconds, raises on anything but an answer."""
    t0 = time.perf_counter()
    r = client.post(url, content=chat_body(model), headers=headers)
    dt = (time.perf_counter() - t0) * 1000
    if r.status_code != 200 or not r.json().get("choices"):
        raise BenchmarkError(f"chat {model} at {url}: HTTP {r.status_code}: {r.text[:300]}")
    return dt


def run_cold_load(ctx: Context, server: JupyterServer) -> None:
    bare = BareLlama(ctx.llama_server, ctx.model_file, ctx.tmp)
    inner: list[float] = []
    with httpx.Client(timeout=300) as client:
        post_ok(client, server, "api/v1/unload", {})

        def router_arm() -> float:
            t0 = time.perf_counter()
            post_ok(client, server, "api/v1/load", {"model_name": DEFAULT_MODEL})
            dt = (time.perf_counter() - t0) * 1000
            inner.append(loaded(client, server)[DEFAULT_MODEL]["load_duration_ms"])
            post_ok(client, server, "api/v1/unload", {"model_name": DEFAULT_MODEL})
            return dt

        def bare_arm() -> float:
            t0 = time.perf_counter()
            bare.spawn()
            try:
                bare.wait_ready()
                return (time.perf_counter() - t0) * 1000
            finally:
                bare.stop()

        try:
            if not ctx.smoke:  # page cache and first-run effects
                interleaved({"bare": bare_arm, "router": router_arm}, Reps(1, 1, 0))
                inner.clear()
            got = interleaved({"bare": bare_arm, "router": router_arm},
                              ctx.reps(Reps(6, 15, 35), Reps(2, 2, 0)))
        finally:
            bare.stop()
    ctx.raw["cold_load_ms"] = {**got, "router_inner": inner}
    ctx.add(Row(S3, "load until ready", "ms", "bare start → /health 200", got["bare"],
                "POST /load", got["router"], "median", Target("max_diff", 50.0, "≤ +50 ms")))
    ctx.add(Row(S3, "breakdown: spawn → ready inside the router", "ms",
                "bare start → /health 200", got["bare"], "router load_duration_ms", inner,
                "median", note="the router's own readiness wait, without HTTP and routing"))
    ctx.sample_load()


def run_swap(ctx: Context, server: JupyterServer) -> None:
    bare = BareLlama(ctx.llama_server, ctx.model_file, ctx.tmp)
    names = ["user.bench-swap-a", "user.bench-swap-b"]
    url = server.api("api/v1/chat/completions")
    with httpx.Client(timeout=300) as client, httpx.Client(timeout=300) as direct:
        post_ok(client, server, "api/v1/unload", {})
        post_ok(client, server, "internal/set", {"max_loaded_models": 1})
        for name in names:
            post_ok(client, server, "api/v1/pull", {"model_name": name,
                                                     "checkpoint": ctx.model_file})
        turn = {"i": 0}

        def router_arm() -> float:
            turn["i"] += 1
            model = names[turn["i"] % 2]
            dt = chat(client, url, server.headers, model)
            now = loaded(client, server)
            if set(now) != {model}:
                raise BenchmarkError(f"swap to {model} left {sorted(now)} loaded")
            return dt

        def bare_arm() -> float:
            t0 = time.perf_counter()
            bare.stop()
            bare.start()
            chat(direct, bare.url + "/v1/chat/completions", bare.headers, "bare")
            return (time.perf_counter() - t0) * 1000

        try:
            chat(client, url, server.headers, names[0])  # the first load is not a swap
            bare.start()
            got = interleaved({"bare": bare_arm, "router": router_arm},
                              ctx.reps(Reps(6, 15, 40), Reps(1, 1, 0)))
        finally:
            bare.stop()
            post_ok(client, server, "api/v1/unload", {})
            post_ok(client, server, "internal/set", {"max_loaded_models": -1})
    ctx.raw["swap_ms"] = got
    ctx.add(Row(S4, "request that forces a swap, max_tokens 1", "ms",
                "bare SIGTERM+wait, start, /health 200, request", got["bare"],
                "router (evict + load + request)", got["router"], "median",
                Target("max_diff", 100.0, "≤ +100 ms")))
    ctx.sample_load()
