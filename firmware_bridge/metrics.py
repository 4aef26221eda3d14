"""The device's metrics in Prometheus' text format (prometheus-client), for `GET /metrics` (http_api.py).

Counters and gauges are read from the service's telemetry report at each scrape (one owner: the service's Counters
and its report), so the numbers agree with the MQTT telemetry; the latency histograms are observed per text answer
(workers.Workers' observe hook).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from edgegen.firmware_bridge import responses

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Outcomes of a request among the service's counters (counters.Counters), as one labelled counter
# (errors: every error answer, refusals included; internal_errors: the engine failed)
OUTCOMES = ("served", "cancelled", "busy", "duplicates", "errors", "internal_errors")
GAUGES = {"queue_depth": "requests waiting", "queue_size": "requests that may wait before busy",
          "slots": "requests decoded at once", "busy_slots": "requests running now",
          "peak_rss_bytes": "peak resident memory of the device process", "uptime_s": "seconds since start"}
TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
TOKEN_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


class _ReportCollector:
    def __init__(self, report: Callable[[], dict[str, Any]]) -> None:
        self.report = report

    def collect(self) -> Iterator[Metric]:
        r = self.report()
        requests = CounterMetricFamily("edgegen_requests", "requests by outcome", labels=["outcome"])
        for outcome in OUTCOMES:
            requests.add_metric([outcome], float(r.get(outcome, 0)))
        yield requests
        tokens = CounterMetricFamily("edgegen_generated_tokens", "tokens generated")
        tokens.add_metric([], float(r.get("generated_tokens", 0)))
        yield tokens
        for key, text in GAUGES.items():
            yield GaugeMetricFamily(f"edgegen_{key}", text, value=float(r.get(key, 0)))


class Metrics:
    """One device's metrics: `observe` each text answer's stats, `exposition()` for a scrape."""

    def __init__(self, report: Callable[[], dict[str, Any]]) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_ReportCollector(report))
        self.ttft = Histogram("edgegen_time_to_first_token_seconds", "request arrival to its first token",
                              buckets=TTFT_BUCKETS, registry=self.registry)
        self.per_token = Histogram("edgegen_time_per_output_token_seconds", "decode time per token after the first",
                                   buckets=TOKEN_BUCKETS, registry=self.registry)

    def observe(self, stats: responses.Stats) -> None:
        self.ttft.observe((stats.queue_ms + stats.ttft_ms) / 1000)
        if stats.tokens_per_s > 0:
            self.per_token.observe(1 / stats.tokens_per_s)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
