"""Counters and histograms for the request path: a dict update per event, a family per scrape.

Every docker command is counted and timed at both front doors. prometheus_client's own
metrics take a lock and run several Python frames per update, a measurable share of what a
request costs ds01d. These are updated only from ds01d's event loop, and read when
Prometheus scrapes, on the same loop (``metrics_app``), so they need no lock: the hot path
is one dict lookup and an addition or two.
"""

from __future__ import annotations

import math
import time
from bisect import bisect_left
from collections.abc import Iterator, Sequence

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString


class LoopCounter(Collector):
    """A labelled counter (``NAME_total`` and ``NAME_created`` per label set)."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str]) -> None:
        self.name = name.removesuffix("_total")
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.counts: dict[tuple[str, ...], float] = {}
        self.created: dict[tuple[str, ...], float] = {}

    def inc(self, labels: tuple[str, ...]) -> None:
        """Count one event; ``labels`` in ``labelnames`` order, already bounded."""
        count = self.counts.get(labels)
        if count is None:
            self.created[labels] = time.time()
            count = 0.0
        self.counts[labels] = count + 1

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labels, count in self.counts.items():
            family.add_metric(labels, count, created=self.created[labels])
        yield family


class LoopHistogram(Collector):
    """A histogram with one label: per label value, a count per bucket and the sum."""

    def __init__(
        self, name: str, documentation: str, labelname: str, buckets: Sequence[float]
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelname = labelname
        self.bounds = tuple(sorted(buckets))
        self.names = [floatToGoString(b) for b in (*self.bounds, math.inf)]
        # label value -> [count in each bucket (the last is +Inf, not cumulative)..., sum]
        self.series: dict[str, list[float]] = {}

    def observe(self, label: str, value: float) -> None:
        row = self.series.get(label)
        if row is None:
            row = self.series[label] = [0.0] * (len(self.bounds) + 2)
        value = max(0.0, value)
        row[bisect_left(self.bounds, value)] += 1  # the first bucket whose bound is >= value
        row[-1] += value

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=[self.labelname])
        for label, row in self.series.items():
            total, buckets = 0.0, []
            for name, count in zip(self.names, row[:-1], strict=True):
                total += count
                buckets.append((name, total))
            family.add_metric([label], buckets, sum_value=row[-1])
        yield family
