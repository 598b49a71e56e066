"""Prometheus series of the remote models, read from the registry at scrape time.

``lemonade_remote_up{model,replica}`` (1 when the replica answers, 0 when it is down, absent
before its first probe), ``lemonade_remote_probe_latency_seconds{model,replica}`` and
``lemonade_remote_requests_total{model,replica,outcome}``. The ``replica`` label is the
replica's base URL, which never holds a key (credentials in URLs are refused at ``/pull``).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from .remote import RemoteRegistry


class RemoteCollector(Collector):
    """Yields the remote series from a snapshot of :class:`RemoteRegistry`; never writes."""

    def __init__(self, registry: RemoteRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        up = GaugeMetricFamily("lemonade_remote_up", "Remote replica answers (1) or not (0)",
                               labels=["model", "replica"])
        latency = GaugeMetricFamily("lemonade_remote_probe_latency_seconds",
                                    "Latency of the last probe of a remote replica",
                                    labels=["model", "replica"])
        for model in self._registry.all():
            for replica in model.replicas:
                if replica.up is not None:
                    up.add_metric([model.name, replica.url], 1.0 if replica.up else 0.0)
                if replica.latency_ms is not None:
                    latency.add_metric([model.name, replica.url], replica.latency_ms / 1000)
        yield up
        yield latency
        requests = CounterMetricFamily("lemonade_remote_requests",
                                       "Requests to remote replicas, by outcome",
                                       labels=["model", "replica", "outcome"])
        for (model_name, url, outcome), count in sorted(self._registry.requests.items()):
            requests.add_metric([model_name, url, outcome], count)
        yield requests
