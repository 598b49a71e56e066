"""Section 10: the node router under JupyterHub: the Hub's proxy path, and fairness.

One real JupyterHub (its configurable-http-proxy, the documented config, the node router as a
managed service with the real ``llama-server`` and default model; ``tests/hub_node/hub.py``
starts it) serves the three users of the tests: alice, bob and admin.

* **Proxy path.** The same request, with the same Hub token, goes to the service directly
  (its own port) and through the Hub's proxy (``/services/lemonade/``), alternating: p50 of a
  ``max_tokens: 1`` chat and time to first token of a 16-token stream. The difference is the
  proxy's hop.
* **Fairness.** Bob's p50 latency (``max_tokens: 1`` chats, one at a time) while alice keeps
  16 streams going, with ``node_max_requests_per_user = -1`` (no limit: bob's requests queue
  behind all of alice's) and with a limit of 4 (alice's 5th request gets 429 and retries; bob
  waits behind at most 4 of hers). The two phases alternate, and the ratio says how much the
  limit gives bob back.

Needs JupyterHub and configurable-http-proxy (``scripts/test.sh`` installs both); without them
the section says so in the notes and measures nothing.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import shutil
import time
from typing import Any

import httpx

from .common import PROMPT, Context, Reps, interleaved
from .procs import BenchmarkError
from .proxy import _stream
from .report import Row

S10 = "10. Node router under JupyterHub"
#: Alice's concurrent streams in the fairness phases, and their length.
STREAMS = 16
STREAM_TOKENS = 64
#: Requests in flight per user in the limited phase.
LIMIT = 4


def available(ctx: Context) -> bool:
    """Whether JupyterHub and its proxy are installed (else a note, and no rows)."""
    if importlib.util.find_spec("jupyterhub") and shutil.which("configurable-http-proxy"):
        return True
    ctx.notes.append(f"{S10}: skipped, JupyterHub or configurable-http-proxy is missing "
                     "(pip install jupyterhub; npm install -g configurable-http-proxy).")
    return False


def run_hub(ctx: Context) -> None:
    from tests.hub_node.hub import HubNode  # the test harness: the documented Hub config

    node = HubNode(ctx.tmp / "hub", lemonade={"llama_server_path": ctx.llama_server,
                                              "max_loaded_models": 1})
    try:
        node.start()
        model = _load(node)
        _proxy_path(ctx, node, model)
        _fairness(ctx, node, model)
    finally:
        node.stop()


def _load(node: Any) -> str:
    from lemonade_jupyter.core.catalog import DEFAULT_MODEL

    with node.client("admin") as http:
        r = http.post("lemonade/api/v1/load", json={"model_name": DEFAULT_MODEL,
                                                    "parallel": 4})
        if r.status_code != 200:
            raise BenchmarkError(f"hub /load: {r.status_code} {r.text[:300]}")
    return DEFAULT_MODEL


def _chat_body(model: str, **extra: Any) -> bytes:
    return json.dumps({"model": model, "messages": PROMPT, "max_tokens": 1,
                       "temperature": 0, **extra}).encode()


def _proxy_path(ctx: Context, node: Any, model: str) -> None:
    direct_url = f"http://127.0.0.1:{node.service_port}/services/lemonade/"
    headers = {"Authorization": f"token {node.tokens['bob']}",
               "Content-Type": "application/json"}
    path = "lemonade/api/v1/chat/completions"
    body = _chat_body(model)
    with httpx.Client(timeout=60) as direct, httpx.Client(timeout=60) as proxied:
        def arm(client: httpx.Client, url: str):
            def once() -> float:
                t0 = time.perf_counter()
                r = client.post(url, content=body, headers=headers)
                dt = (time.perf_counter() - t0) * 1000
                if r.status_code != 200:
                    raise BenchmarkError(f"{url}: HTTP {r.status_code}: {r.text[:300]}")
                return dt
            return once
        arms = {"direct": arm(direct, direct_url + path),
                "proxy": arm(proxied, node.service_url + path)}
        interleaved(arms, ctx.reps(Reps(3, 3, 0), Reps(1, 1, 0)))  # warm-up
        got = interleaved(arms, ctx.reps(Reps(40, 200, 40), Reps(3, 3, 0)))
    ttft = asyncio.run(_ttft(ctx, direct_url + path, node.service_url + path, headers,
                             model))
    ctx.raw["hub_proxy_ms"] = got
    ctx.raw["hub_proxy_ttft_ms"] = ttft
    ctx.add(Row(S10, "latency p50, max_tokens 1", "ms", "service direct", got["direct"],
                "through the Hub's proxy", got["proxy"], "median",
                note="same node router and Hub token on both sides"))
    ctx.add(Row(S10, "time to first token c=1", "ms", "service direct", ttft["direct"],
                "through the Hub's proxy", ttft["proxy"], "median"))
    ctx.sample_load()


async def _ttft(ctx: Context, direct: str, proxied: str, headers: dict[str, str],
                model: str) -> dict[str, list[float]]:
    body = _chat_body(model, max_tokens=16, stream=True)
    reps = ctx.reps(Reps(15, 100, 30), Reps(2, 2, 0))
    out: dict[str, list[float]] = {"direct": [], "proxy": []}
    urls = {"direct": direct, "proxy": proxied}
    started = time.monotonic()
    async with httpx.AsyncClient(timeout=60) as client:
        for name in urls:  # warm-up
            await _stream(client, urls[name], headers, body)
        for i in range(reps.max):
            if i >= reps.min and time.monotonic() - started > reps.budget_s:
                break
            for name in (("direct", "proxy") if i % 2 == 0 else ("proxy", "direct")):
                out[name].append((await _stream(client, urls[name], headers, body))["ttft_ms"])
    return out


def _fairness(ctx: Context, node: Any, model: str) -> None:
    # Bob's request waits behind alice's streams (seconds each without a limit): few samples,
    # in rounds that alternate the two phases so both see the same machine.
    rounds, per_phase, tokens = (1, 2, 8) if ctx.smoke else (3, 4, STREAM_TOKENS)
    out: dict[str, list[float]] = {"no limit": [], f"limit {LIMIT}": []}
    refused = {name: 0 for name in out}
    for _ in range(rounds):
        for name, limit in (("no limit", -1), (f"limit {LIMIT}", LIMIT)):
            _set_limit(node, limit)
            bob, alice_429 = asyncio.run(_phase(node, model, per_phase, tokens))
            out[name] += bob
            refused[name] += alice_429
    _set_limit(node, -1)
    ctx.raw["hub_fairness_bob_ms"] = out
    ctx.raw["hub_fairness_alice_429"] = refused
    ctx.add(Row(S10, f"bob's latency p50 while alice runs {STREAMS} streams", "ms",
                "no per-user limit", out["no limit"],
                f"node_max_requests_per_user = {LIMIT}", out[f"limit {LIMIT}"], "median",
                note=f"max_tokens 1 chats one at a time; parallel 4; alice's {STREAMS} streams of "
                f"{tokens} tokens retry 50 ms after a 429 ({refused[f'limit {LIMIT}']} "
                "refused)"))
    ctx.sample_load()


def _set_limit(node: Any, limit: int) -> None:
    with node.client("admin") as http:
        r = http.post("lemonade/internal/set", json={"node_max_requests_per_user": limit})
        if r.status_code != 200:
            raise BenchmarkError(f"hub /internal/set: {r.status_code} {r.text[:300]}")


async def _phase(node: Any, model: str, samples: int, tokens: int) -> tuple[list[float], int]:
    """Bob's latencies while alice keeps :data:`STREAMS` streams going; alice's 429s."""
    url = node.service_url + "lemonade/api/v1/chat/completions"
    alice = {"Authorization": f"token {node.tokens['alice']}"}
    bob = {"Authorization": f"token {node.tokens['bob']}"}
    stream_body = _chat_body(model, max_tokens=tokens, stream=True, ignore_eos=True)
    done = asyncio.Event()
    refused = 0

    async def alice_stream(client: httpx.AsyncClient) -> None:
        nonlocal refused
        while not done.is_set():
            async with client.stream("POST", url, content=stream_body, headers=alice) as r:
                if r.status_code == 429:
                    refused += 1
                    await r.aread()
                    await asyncio.sleep(0.05)
                    continue
                if r.status_code != 200:
                    raise BenchmarkError(f"alice's stream: HTTP {r.status_code}")
                async for _ in r.aiter_bytes():
                    pass

    limits = httpx.Limits(max_connections=STREAMS + 4)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        streams = [asyncio.create_task(alice_stream(client)) for _ in range(STREAMS)]
        try:
            await asyncio.sleep(0.5)  # let alice's streams take the slots first
            bob_ms: list[float] = []
            for _ in range(samples):
                t0 = time.perf_counter()
                r = await client.post(url, content=_chat_body(model), headers=bob)
                if r.status_code != 200:
                    raise BenchmarkError(f"bob's chat: HTTP {r.status_code}: {r.text[:300]}")
                bob_ms.append((time.perf_counter() - t0) * 1000)
        finally:
            done.set()
            await asyncio.wait_for(asyncio.gather(*streams, return_exceptions=True), 120)
    return bob_ms, refused
