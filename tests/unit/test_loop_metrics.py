"""The request path's counters and histograms (ds01d/observe/loop_metrics.py) expose exactly what
prometheus_client's own would, for the same events: checked side by side on one scrape."""

from __future__ import annotations

import random

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import generate_latest

from ds01d.observe.loop_metrics import LoopCounter, LoopHistogram
from ds01d.observe.metrics import LATENCY_BUCKETS


def _samples(registry: CollectorRegistry) -> list[str]:
    lines = generate_latest(registry).decode().splitlines()
    return sorted(line for line in lines if "_created" not in line)


def test_histogram_matches_prometheus_client() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    loop = LoopHistogram("t_seconds", "Doc.", "endpoint", LATENCY_BUCKETS)
    ours.register(loop)
    reference = Histogram(
        "t_seconds", "Doc.", ["endpoint"], buckets=LATENCY_BUCKETS, registry=theirs
    )
    rng = random.Random(7)
    # every bucket bound exactly (a bound is inside its own bucket), values past the last, zero
    values = [*LATENCY_BUCKETS, 0.0, 11.0, 1e6] + [rng.expovariate(1000) for _ in range(500)]
    for i, value in enumerate(values):
        endpoint = ("/_ping", "/containers/json", "/containers/{id}/start")[i % 3]
        loop.observe(endpoint, value)
        reference.labels(endpoint=endpoint).observe(value)
    assert _samples(ours) == _samples(theirs)


def test_a_negative_duration_counts_as_zero() -> None:
    registry = CollectorRegistry()
    loop = LoopHistogram("t_seconds", "Doc.", "endpoint", LATENCY_BUCKETS)
    registry.register(loop)
    loop.observe("/x", -1.0)
    assert 't_seconds_bucket{endpoint="/x",le="0.0001"} 1.0' in _samples(registry)
    assert 't_seconds_sum{endpoint="/x"} 0.0' in _samples(registry)


def test_counter_matches_prometheus_client() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    labels = ["door", "result"]
    loop = LoopCounter("t_total", "Doc.", labels)
    ours.register(loop)
    reference = Counter("t", "Doc.", labels, registry=theirs)
    for door, result in [("authz", "allow")] * 3 + [("gateway", "deny")] * 2:
        loop.inc((door, result))
        reference.labels(door=door, result=result).inc()
    assert _samples(ours) == _samples(theirs)
    created = [line for line in generate_latest(ours).decode().splitlines() if "_created{" in line]
    assert len(created) == 2  # one creation time per label set, as prometheus_client's
