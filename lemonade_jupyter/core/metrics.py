"""Prometheus metrics of one router, in a registry of its own.

Counters follow the event stream (evictions by reason, restarts, load durations); histograms
of time to first token and tokens per second per model follow the request statistics, and so
do the usage counters per user (requests, prompt and completion tokens, time to first token:
the ``user`` label is the request's user, see ``core/usage.py``); gauges
(loaded and pinned models per type, memory per model and per device, requests waiting per
model) are read from a snapshot of the router taken at scrape time, so they can never drift
from ``/health``. The metrics know the router only through that snapshot function, its event
log and its request statistics.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .events import Event, EventLog
from .live_model import RouterSnapshot
from .request_stats import RequestRecord, RequestStats
from .usage import NO_USER

LOAD_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120)
#: Time to first token (s): from a cached short prompt to a long prefill on a CPU.
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
#: Decoding speed (tokens/s): a large model on a CPU to a small one on a GPU.
TPS_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)


class RouterMetrics:
    """Owns the registry; fed by router events, scraped by ``GET lemonade/metrics``."""

    def __init__(self, events: EventLog, snapshot: Callable[[], RouterSnapshot],
                 stats: RequestStats | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.evictions = Counter(
            "lemonade_evictions", "Models evicted, by reason", ["reason"], registry=self.registry
        )
        self.unloads = Counter(
            "lemonade_unloads", "Explicit unloads", registry=self.registry
        )
        self.downsizes = Counter(
            "lemonade_downsizes", "Models downsized (memory released, slot kept)",
            registry=self.registry,
        )
        self.restarts = Counter(
            "lemonade_backend_restarts", "Backends reloaded after a crash or hang",
            registry=self.registry,
        )
        self.crashes = Counter(
            "lemonade_backend_crashes", "Backends that exited or hung unasked",
            registry=self.registry,
        )
        self.load_seconds = Histogram(
            "lemonade_load_duration_seconds", "Time from spawn to ready",
            buckets=LOAD_BUCKETS, registry=self.registry,
        )
        self.time_to_first_token = Histogram(
            "lemonade_time_to_first_token_seconds",
            "Prompt processing time of generation requests, as the engine measured it",
            ["model"], buckets=TTFT_BUCKETS, registry=self.registry,
        )
        self.tokens_per_second = Histogram(
            "lemonade_tokens_per_second", "Decoding speed of generation requests",
            ["model"], buckets=TPS_BUCKETS, registry=self.registry,
        )
        self.user_requests = Counter(
            "lemonade_user_requests", "Generation requests, by user", ["user"],
            registry=self.registry,
        )
        self.user_prompt_tokens = Counter(
            "lemonade_user_prompt_tokens", "Prompt tokens of generation requests (cached ones "
            "included), by user", ["user"], registry=self.registry,
        )
        self.user_completion_tokens = Counter(
            "lemonade_user_completion_tokens", "Tokens generated, by user", ["user"],
            registry=self.registry,
        )
        self.user_time_to_first_token = Histogram(
            "lemonade_user_time_to_first_token_seconds",
            "Prompt processing time of generation requests, by user", ["user"],
            buckets=TTFT_BUCKETS, registry=self.registry,
        )
        self.registry.register(_StateCollector(snapshot))
        events.add_listener(self.on_event)
        if stats is not None:
            stats.add_listener(self.on_request)

    def on_request(self, rec: RequestRecord) -> None:
        self.time_to_first_token.labels(model=rec.model).observe(rec.time_to_first_token)
        if rec.output_tokens > 0:
            self.tokens_per_second.labels(model=rec.model).observe(rec.tokens_per_second)
        user = rec.user or NO_USER
        self.user_requests.labels(user=user).inc()
        self.user_prompt_tokens.labels(user=user).inc(rec.prompt_tokens)
        self.user_completion_tokens.labels(user=user).inc(rec.output_tokens)
        self.user_time_to_first_token.labels(user=user).observe(rec.time_to_first_token)

    def on_event(self, event: Event) -> None:
        if event.kind == "evict":
            self.evictions.labels(reason=event.reason or "unknown").inc()
        elif event.kind == "unload":
            # An explicit unload is also counted as an eviction with reason "manual", so
            # one counter answers "why did models leave?".
            self.unloads.inc()
            self.evictions.labels(reason=event.reason or "manual").inc()
        elif event.kind == "downsize":
            self.downsizes.inc()
        elif event.kind == "crash":
            self.crashes.inc()
        elif event.kind == "reload" and event.reason == "crash":
            self.restarts.inc()
        if event.kind in ("load", "reload", "restore"):
            ms = event.detail.get("load_duration_ms")
            if isinstance(ms, (int, float)):
                self.load_seconds.observe(ms / 1000.0)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _StateCollector(Collector):
    def __init__(self, snapshot: Callable[[], RouterSnapshot]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[GaugeMetricFamily]:
        state = self._snapshot()
        models = state.models
        loaded = GaugeMetricFamily("lemonade_loaded_models", "Models holding a slot", labels=["type"])
        pinned = GaugeMetricFamily("lemonade_pinned_models", "Pinned models", labels=["type"])
        for model_type in state.types:
            loaded.add_metric([model_type], sum(1 for m in models if m.type == model_type))
            pinned.add_metric(
                [model_type], sum(1 for m in models if m.type == model_type and m.pinned)
            )
        yield loaded
        yield pinned
        per_model = GaugeMetricFamily(
            "lemonade_model_memory_bytes", "Memory held by a model's backend", labels=["model"]
        )
        for m in models:
            if m.memory_bytes is not None:
                per_model.add_metric([m.name], m.memory_bytes)
        yield per_model
        queued = GaugeMetricFamily(
            "lemonade_queue_depth", "Requests waiting in the router for a free slot of a model",
            labels=["model"],
        )
        for m in models:
            queued.add_metric([m.name], m.queued)
        yield queued
        sample = state.memory
        total = GaugeMetricFamily("lemonade_device_memory_total_bytes", "Device memory",
                                  labels=["device", "source"])
        used = GaugeMetricFamily("lemonade_device_memory_used_bytes", "Device memory in use",
                                 labels=["device", "source"])
        if sample is not None:
            for d in sample.devices:
                total.add_metric([d.uuid or d.name, sample.source], d.total)
                used.add_metric([d.uuid or d.name, sample.source], d.used)
        yield total
        yield used
