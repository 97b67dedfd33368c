"""Prometheus metrics: handshake counters and histograms fed from tracker output, plus
self-metrics read at scrape time. Label sets are bounded: path, outcome, family, reason."""

from __future__ import annotations

from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from .. import wire
from ..model import OpenPath, OpenRecord, Outcome

# *_created series would double the exposition and say only when the exporter started
disable_created_metrics()

FAMILIES = ("4", "6")
LOST_REASONS = (*wire.STAT_NAMES, "half_open_expired", "decode_error", "unknown_transition",
                "request_evicted")


class OpenMetrics:
    """Consumes OpenRecords. Every label combination exists at 0 from the start."""

    def __init__(self, registry: CollectorRegistry, buckets: list[float]):
        self.handshakes = Counter(
            "tcptrace_handshakes_total", "Resolved connection-open attempts.",
            ["path", "outcome", "family"], registry=registry)
        self.duration = Histogram(
            "tcptrace_handshake_duration_seconds",
            "Handshake time of established opens (buckets just after each SYN/SYN-ACK re-send).",
            ["path", "family"], buckets=buckets, registry=registry)
        self.syn_rtx = Counter("tcptrace_syn_retransmits_total",
                               "SYNs re-sent during opens.", ["path"], registry=registry)
        self.synack_rtx = Counter("tcptrace_synack_retransmits_total",
                                  "SYN-ACKs re-sent during opens.", registry=registry)
        for path in OpenPath:
            self.syn_rtx.labels(path.value)
            for fam in FAMILIES:
                self.duration.labels(path.value, fam)
                for outcome in Outcome:
                    self.handshakes.labels(path.value, outcome.value, fam)

    def observe(self, rec: OpenRecord) -> None:
        fam = str(rec.family)
        self.handshakes.labels(rec.path.value, rec.outcome.value, fam).inc()
        if rec.outcome is Outcome.ESTABLISHED and rec.duration_s is not None:
            self.duration.labels(rec.path.value, fam).observe(rec.duration_s)
        if rec.syn_retransmits:
            self.syn_rtx.labels(rec.path.value).inc(rec.syn_retransmits)
        if rec.synack_retransmits:
            self.synack_rtx.inc(rec.synack_retransmits)


class SelfMetrics:
    """A collector read at scrape time: losses, handshakes in flight, build and backend."""

    def __init__(self, version: str, backend: str, lost: Callable[[], dict],
                 tracked: Callable[[], int]):
        self.version, self.backend = version, backend
        self.lost, self.tracked = lost, tracked

    def collect(self):
        lost = self.lost()
        c = CounterMetricFamily("tcptrace_events_lost", "Records or opens lost, by reason.",
                                labels=["reason"])
        for reason in LOST_REASONS:
            c.add_metric([reason], lost.get(reason, 0))
        yield c
        yield GaugeMetricFamily("tcptrace_tracked_sockets",
                                "Handshakes in flight in the kernel table.", value=self.tracked())
        info = GaugeMetricFamily("tcptrace_build_info", "Version and backend in use.",
                                 labels=["version", "backend"])
        info.add_metric([self.version, self.backend], 1)
        yield info
