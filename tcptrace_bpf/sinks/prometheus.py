"""Prometheus metrics, as collectors read at scrape time. Label sets are bounded: path,
outcome, family, reason.

HandshakeMetrics counts opens from two sources added together: opens (model.OpenAttempt)
observed in Python (replay, and request sockets the tracker expires) and, in export
mode, the kernel's own per-CPU counters (loader.BpfPrograms.aggregates()), so that live export
does no Python work per connection. Both use the kernel's index layout (wire.AGG_*)."""

from __future__ import annotations

from typing import Callable, Optional

from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                    HistogramMetricFamily)
from prometheus_client.utils import floatToGoString

from .. import wire
from ..model import OpenAttempt, Outcome
from ..summary import LossReason

# No *_created series (they would double the exposition and say only when the exporter
# started): these families are built at each scrape without creation timestamps, so no
# process-wide prometheus_client switch is needed.

LOST_REASONS = tuple(r.value for r in LossReason)  # tcptrace_events_lost_total{reason}
_PATH = {p: i for i, p in enumerate(wire.AGG_PATHS)}
_OUTCOME = {o: i for i, o in enumerate(wire.AGG_OUTCOMES)}
_FAMILY = {f: i for i, f in enumerate(wire.AGG_FAMILIES)}


class HandshakeMetrics:
    """tcptrace_handshakes_total, tcptrace_handshake_duration_seconds,
    tcptrace_syn_retransmits_total, tcptrace_synack_retransmits_total. Every label
    combination exists at 0 from the start."""

    def __init__(self, buckets: list[float],
                 kernel: Optional[Callable[[], dict[str, list[int]]]] = None):
        self.buckets = list(buckets)
        self.kernel = kernel
        nb = len(self.buckets)
        self.handshakes = [0] * (len(wire.AGG_PATHS) * len(wire.AGG_OUTCOMES) * len(wire.AGG_FAMILIES))
        self.rtx = [0] * (len(wire.AGG_PATHS) + 1)
        self.duration = [0] * (len(wire.AGG_PATHS) * len(wire.AGG_FAMILIES) * (nb + 2))

    def observe(self, rec: OpenAttempt) -> None:
        p, f = _PATH[rec.path.value], _FAMILY[rec.family]
        self.handshakes[wire.handshake_index(p, _OUTCOME[rec.outcome.value], f)] += 1
        self.rtx[p] += rec.syn_retransmits
        self.rtx[-1] += rec.synack_retransmits
        if rec.outcome is Outcome.ESTABLISHED and rec.duration_s is not None:
            base = wire.duration_index(p, f, len(self.buckets))
            i = next((i for i, b in enumerate(self.buckets) if rec.duration_s <= b), len(self.buckets))
            self.duration[base + i] += 1
            self.duration[base + len(self.buckets) + 1] += round(rec.duration_s * 1e9)

    def _totals(self) -> tuple[list[int], list[int], list[int]]:
        hs, rtx, dur = list(self.handshakes), list(self.rtx), list(self.duration)
        if self.kernel:
            k = self.kernel()
            hs = [a + b for a, b in zip(hs, k["handshakes"])]
            rtx = [a + b for a, b in zip(rtx, k["rtx"])]
            dur = [a + b for a, b in zip(dur, k["duration"])]
        return hs, rtx, dur

    def collect(self):
        hs, rtx, dur = self._totals()
        opens = CounterMetricFamily("tcptrace_handshakes", "Resolved connection-open attempts.",
                                    labels=["path", "outcome", "family"])
        hist = HistogramMetricFamily(
            "tcptrace_handshake_duration_seconds",
            "Handshake time of established opens (buckets just after each SYN/SYN-ACK re-send).",
            labels=["path", "family"])
        syn = CounterMetricFamily("tcptrace_syn_retransmits", "SYNs re-sent during opens.",
                                  labels=["path"])
        nb = len(self.buckets)
        for p, path in enumerate(wire.AGG_PATHS):
            syn.add_metric([path], rtx[p])
            for f, fam in enumerate(wire.AGG_FAMILIES):
                for o, outcome in enumerate(wire.AGG_OUTCOMES):
                    opens.add_metric([path, outcome, str(fam)], hs[wire.handshake_index(p, o, f)])
                base = wire.duration_index(p, f, nb)
                cumulative, running = [], 0
                for i, bound in enumerate([*self.buckets, float("inf")]):
                    running += dur[base + i]
                    cumulative.append((floatToGoString(bound), running))
                hist.add_metric([path, str(fam)], cumulative, sum_value=dur[base + nb + 1] / 1e9)
        yield opens
        yield hist
        yield syn
        yield CounterMetricFamily("tcptrace_synack_retransmits", "SYN-ACKs re-sent during opens.",
                                  value=rtx[-1])


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
