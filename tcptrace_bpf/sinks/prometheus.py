"""Prometheus metrics, as collectors read at scrape time. Label sets are bounded: path,
outcome, family, reason, flag, queue, and port (listening ports only, at most
--max-listener-ports of them, then "other").

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
from ..listeners import Counts, Listener, PortFolder
from ..model import OpenAttempt, Outcome
from ..summary import LossReason

# No *_created series (they would double the exposition and say only when the exporter
# started): these families are built at each scrape without creation timestamps, so no
# process-wide prometheus_client switch is needed.

LOST_REASONS = tuple(r.value for r in LossReason)  # tcptrace_events_lost_total{reason}
_PATH = {p: i for i, p in enumerate(wire.AGG_PATHS)}
_OUTCOME = {o: i for i, o in enumerate(wire.AGG_OUTCOMES)}
_FAMILY = {f: i for i, f in enumerate(wire.AGG_FAMILIES)}
_FLAG = {f: i for i, f in enumerate(wire.OPEN_FLAG_NAMES)}


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
        self.flagged = [0] * (len(wire.AGG_PATHS) * wire.NOPENFLAGS)

    def observe(self, rec: OpenAttempt) -> None:
        p, f = _PATH[rec.path.value], _FAMILY[rec.family]
        self.handshakes[wire.handshake_index(p, _OUTCOME[rec.outcome.value], f)] += 1
        self.rtx[p] += rec.syn_retransmits
        self.rtx[-1] += rec.synack_retransmits
        for flag in rec.flags:
            self.flagged[p * wire.NOPENFLAGS + _FLAG[flag]] += 1
        if rec.outcome is Outcome.ESTABLISHED and rec.duration_s is not None:
            base = wire.duration_index(p, f, len(self.buckets))
            i = next((i for i, b in enumerate(self.buckets) if rec.duration_s <= b), len(self.buckets))
            self.duration[base + i] += 1
            self.duration[base + len(self.buckets) + 1] += round(rec.duration_s * 1e9)

    def _totals(self) -> tuple[list[int], list[int], list[int], list[int]]:
        hs, rtx, dur = list(self.handshakes), list(self.rtx), list(self.duration)
        fl = list(self.flagged)
        if self.kernel:
            k = self.kernel()
            hs = [a + b for a, b in zip(hs, k["handshakes"])]
            rtx = [a + b for a, b in zip(rtx, k["rtx"])]
            dur = [a + b for a, b in zip(dur, k["duration"])]
            fl = [a + b for a, b in zip(fl, k["flagged"])]
        return hs, rtx, dur, fl

    def collect(self):
        hs, rtx, dur, fl = self._totals()
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
        flagged = CounterMetricFamily(
            "tcptrace_handshakes_flagged",
            "Opens that carried Fast Open data or were born of a SYN cookie.",
            labels=["path", "flag"])
        for p, path in enumerate(wire.AGG_PATHS):
            for i, flag in enumerate(wire.OPEN_FLAG_NAMES):
                flagged.add_metric([path, flag], fl[p * wire.NOPENFLAGS + i])
        yield flagged


class ListenerMetrics:
    """The listener side, per listening port: drops by reason, SYN cookies sent (the
    kernel's per-port counters, exact at each scrape) and the queues now (summed over the
    port's listeners). `port` is bounded by a PortFolder; its folding is counted."""

    def __init__(self, ports: Callable[[], dict[int, Counts]],
                 listeners: Callable[[], list[Listener]], max_ports: int = 64):
        self.ports, self.listeners = ports, listeners
        self.folder = PortFolder(max_ports)

    def collect(self):
        label = self.folder.label
        listeners = self.listeners()
        # a listening port's counters exist at 0 before its first trouble, so that
        # increase() sees that trouble (a series born above 0 hides its first jump)
        ports = {lst.port: Counts() for lst in listeners if not lst.closed and lst.port}
        ports.update(self.ports())
        per_port: dict[str, Counts] = {}
        for port, counts in sorted(ports.items()):
            name = label(port)
            per_port[name] = per_port.get(name, Counts()).plus(counts)
        queues: dict[str, list[int]] = {}  # port -> [accept, syn, limit]
        for lst in listeners:
            if lst.accept_queue is None:
                continue  # closed, or not readable
            q = queues.setdefault(label(lst.port), [0, 0, 0])
            q[0] += lst.accept_queue
            q[1] += lst.syn_queue
            q[2] += lst.accept_queue_max
        drops = CounterMetricFamily("tcptrace_listen_drops",
                                    "Segments a listener dropped and the kernel counted as "
                                    "ListenDrops, by reason.", labels=["port", "reason"])
        cookies = CounterMetricFamily("tcptrace_syncookies_sent",
                                      "SYN cookies a listener sent.", labels=["port"])
        for name, c in per_port.items():
            for reason, n in zip(wire.DROP_REASONS, c.drops):
                drops.add_metric([name, reason], n)
            cookies.add_metric([name], c.syncookies_sent)
        length = GaugeMetricFamily("tcptrace_listen_queue_length",
                                   "Accept queue (children not yet accepted) and SYN queue "
                                   "(request sockets) now, summed over the port's listeners.",
                                   labels=["port", "queue"])
        limit = GaugeMetricFamily("tcptrace_listen_queue_limit",
                                  "Accept queue limit (the listen() backlog), summed over the "
                                  "port's listeners.", labels=["port"])
        for name, (acc, syn, lim) in sorted(queues.items()):
            length.add_metric([name, "accept"], acc)
            length.add_metric([name, "syn"], syn)
            limit.add_metric([name], lim)
        yield drops
        yield cookies
        yield length
        yield limit
        yield CounterMetricFamily("tcptrace_listener_ports_folded",
                                  "Listening ports counted under port=\"other\" (beyond "
                                  "--max-listener-ports).", value=self.folder.folded)


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
