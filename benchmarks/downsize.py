"""Section 6: what a downsize frees and what it costs to come back, by measurement.

Three ways to give an idle model's memory back, each ending with the first chat after it:

* **downsize** (what the router does): ``POST lemonade/internal/simulate-vram-pressure
  {"pct": -1}`` on a model loaded with ``auto_evict``/``downsize_idle_timeout: 0``. The backend
  process stops; the next chat restores it.
* **cold**: unload the model; the next chat loads it from scratch (auto-load).
* **llama-server sleep mode** (the alternative to stopping the process): a bare
  ``llama-server`` with ``--sleep-idle-seconds 1``; wait until ``GET /props`` shows ``is_sleeping: true``, measure its
  RSS, then time the request that wakes it.

Memory is the RSS of the backend process (and its children) right before and after.
"""

from __future__ import annotations

import statistics
import time

import httpx

from .common import Context, Reps
from .lifecycle import chat, loaded, post_ok
from .procs import BareLlama, BenchmarkError, JupyterServer, is_running, rss_bytes
from .report import Row

S6 = "6. Downsize"
MB = 1024 * 1024
NAME = "user.bench-downsize"


def _downsize_once(client: httpx.Client, server: JupyterServer, out: dict[str, list[float]]
                   ) -> None:
    url = server.api("api/v1/chat/completions")
    post_ok(client, server, "api/v1/load", {
        "model_name": NAME, "auto_evict": True, "downsize_idle_timeout": 0,
        "evict_idle_timeout": 3600,
    })
    chat(client, url, server.headers, NAME)
    pid = loaded(client, server)[NAME]["pid"]
    out["awake_mb"].append(rss_bytes(pid) / MB)
    post_ok(client, server, "internal/simulate-vram-pressure", {"pct": -1})
    entry = loaded(client, server).get(NAME)
    if entry is None or entry["status"] != "downsized":
        raise BenchmarkError(f"downsize did not happen: {entry}")
    deadline = time.monotonic() + 5
    while is_running(pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    out["downsized_mb"].append(rss_bytes(pid) / MB)
    if entry.get("memory_freed_bytes"):
        out["reported_freed_mb"].append(entry["memory_freed_bytes"] / MB)
    out["restore_ms"].append(chat(client, url, server.headers, NAME))
    if loaded(client, server)[NAME]["status"] not in ("ready", "in_use"):
        raise BenchmarkError("restored model is not ready")
    post_ok(client, server, "api/v1/unload", {"model_name": NAME})


def _cold_once(client: httpx.Client, server: JupyterServer, out: dict[str, list[float]]
               ) -> None:
    out["cold_ms"].append(chat(client, server.api("api/v1/chat/completions"),
                               server.headers, NAME))
    post_ok(client, server, "api/v1/unload", {"model_name": NAME})


def _sleep_once(client: httpx.Client, bare: BareLlama, out: dict[str, list[float]]) -> None:
    url = bare.url + "/v1/chat/completions"
    chat(client, url, bare.headers, "bare")
    out["sleep_awake_mb"].append(rss_bytes(bare.pid) / MB)
    t0 = time.monotonic()
    while True:
        props = client.get(bare.url + "/props", headers=bare.headers).json()
        if props.get("is_sleeping") is True:
            break
        if time.monotonic() - t0 > 30:
            raise BenchmarkError("llama-server never reported is_sleeping: true")
        time.sleep(0.05)
    out["time_to_sleep_s"].append(time.monotonic() - t0)
    out["asleep_mb"].append(rss_bytes(bare.pid) / MB)
    out["wake_ms"].append(chat(client, url, bare.headers, "bare"))


def run_downsize(ctx: Context, server: JupyterServer) -> None:
    keys = ("awake_mb", "downsized_mb", "reported_freed_mb", "restore_ms", "cold_ms",
            "sleep_awake_mb", "asleep_mb", "time_to_sleep_s", "wake_ms")
    out: dict[str, list[float]] = {k: [] for k in keys}
    bare = BareLlama(ctx.llama_server, ctx.model_file, ctx.tmp, sleep_idle_seconds=1)
    reps = ctx.reps(Reps(3, 6, 45), Reps(1, 1, 0))
    with httpx.Client(timeout=300) as client, httpx.Client(timeout=300) as direct:
        post_ok(client, server, "api/v1/unload", {})
        post_ok(client, server, "api/v1/pull", {"model_name": NAME,
                                                 "checkpoint": ctx.model_file})
        bare.start()
        try:
            arms = [lambda: _downsize_once(client, server, out),
                    lambda: _cold_once(client, server, out),
                    lambda: _sleep_once(direct, bare, out)]
            started = time.monotonic()
            for i in range(reps.max):
                if i >= reps.min and time.monotonic() - started > reps.budget_s:
                    break
                for arm in arms[i % 3:] + arms[: i % 3]:
                    arm()
        finally:
            bare.stop()
            post_ok(client, server, "api/v1/unload", {})
    ctx.raw["downsize"] = out
    freed = [a - d for a, d in zip(out["awake_mb"], out["downsized_mb"])]
    slept = [a - s for a, s in zip(out["sleep_awake_mb"], out["asleep_mb"])]
    ctx.add(Row(S6, "backend RSS: downsize", "MB", "loaded, after a chat", out["awake_mb"],
                "downsized", out["downsized_mb"], "median",
                note=f"freed {_med(freed):.0f} MB by RSS; the router reported "
                     f"{_med(out['reported_freed_mb']):.0f} MB freed"))
    ctx.add(Row(S6, "backend RSS: llama-server sleep mode", "MB", "awake, after a chat",
                out["sleep_awake_mb"], "is_sleeping: true", out["asleep_mb"], "median",
                note=f"freed {_med(slept):.0f} MB; asleep after "
                     f"{_med(out['time_to_sleep_s']):.2f} s of polling /props"))
    ctx.add(Row(S6, "first chat: restore after downsize vs cold", "ms",
                "cold (unload, then chat auto-loads)", out["cold_ms"],
                "restore (chat after downsize)", out["restore_ms"], "median"))
    ctx.add(Row(S6, "first chat: restore vs sleep-mode wake", "ms",
                "wake from sleep mode (bare)", out["wake_ms"],
                "restore (chat after downsize)", out["restore_ms"], "median",
                note="restore goes through the router; the wake is direct"))
    ctx.sample_load()


def _med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")
