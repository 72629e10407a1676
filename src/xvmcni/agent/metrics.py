"""Prometheus metrics for the agent (prometheus_client), on 127.0.0.1 by default.

Request latency and errors are counted as they happen; IPAM usage and
containers per network are read from the stores at scrape time, so they can
never drift from the truth.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from xvmcni.cni import wire

log = logging.getLogger(__name__)

# CNI ADD/DEL take milliseconds; the long tail is lock waits and delegated IPAM.
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class UsageCollector(Collector):
    def __init__(self, usage: Callable[[], list[dict[str, Any]]]) -> None:
        self._usage = usage

    def collect(self) -> Iterator[GaugeMetricFamily]:
        used = GaugeMetricFamily("xvmcni_ipam_used_addresses",
                                 "Addresses allocated on this host", labels=["network"])
        size = GaugeMetricFamily("xvmcni_ipam_pool_addresses",
                                 "Addresses this host may allocate", labels=["network"])
        containers = GaugeMetricFamily("xvmcni_containers",
                                       "Containers attached on this host", labels=["network"])
        for net in self._usage():
            used.add_metric([net["name"]], net["used"])
            size.add_metric([net["name"]], net["size"])
            containers.add_metric([net["name"]], net["containers"])
        yield used
        yield size
        yield containers


class Metrics:
    def __init__(self, usage: Callable[[], list[dict[str, Any]]]) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram("xvmcni_cni_request_seconds", "CNI request latency",
                                 ["command"], buckets=_BUCKETS, registry=self.registry)
        self.errors = Counter("xvmcni_cni_errors", "CNI requests that failed, by code",
                              ["command", "code"], registry=self.registry)
        self.registry.register(UsageCollector(usage))

    def observe(self, command: str, seconds: float, error_code: int | None) -> None:
        # Labels only from closed sets: every label value is a time series forever.
        if command not in wire.COMMANDS:
            command = "invalid"
        self.latency.labels(command=command).observe(seconds)
        if error_code is not None:
            self.errors.labels(command=command, code=str(error_code)).inc()

    def serve(self, address: str, port: int) -> None:
        start_http_server(port, addr=address, registry=self.registry)
        log.info("metrics on http://%s:%d/metrics", address, port)
