"""The listener side (issue 12): what each listening socket dropped, the cookies it sent, its
queues now. The kernel counts (bpf/tcptrace.bpf.c, "listener side"); this module turns its
per-socket entries into typed Listener values (from_kernel, the one reader of struct
tcptrace_listener), the interval reports `trace` prints (ListenerWatch, free of I/O) and
the per-port series the exporter serves (PortFolder)."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import Iterable, Optional

from . import wire

DROP_REASONS = wire.DROP_REASONS  # accept_queue_full, syn_queue_full, other


@dataclass(frozen=True)
class Counts:
    """Monotonic counters of one listening socket (or one port) since tracing began."""
    drops: tuple[int, ...] = (0,) * wire.NDROPS   # by DROP_REASONS
    syncookies_sent: int = 0
    synack_retransmits: int = 0
    passive_opens: int = 0

    def minus(self, old: "Counts") -> "Counts":
        return Counts(tuple(a - b for a, b in zip(self.drops, old.drops)),
                      self.syncookies_sent - old.syncookies_sent,
                      self.synack_retransmits - old.synack_retransmits,
                      self.passive_opens - old.passive_opens)

    def plus(self, other: "Counts") -> "Counts":
        return Counts(tuple(a + b for a, b in zip(self.drops, other.drops)),
                      self.syncookies_sent + other.syncookies_sent,
                      self.synack_retransmits + other.synack_retransmits,
                      self.passive_opens + other.passive_opens)

    @property
    def moved(self) -> bool:
        # children alone are the normal case: a line says the listener had trouble
        return any(self.drops) or bool(self.syncookies_sent or self.synack_retransmits)


@dataclass(frozen=True)
class Listener:
    """One listening socket as the kernel side has it now."""
    key: int                 # the socket's address: identity while it lives
    netns: int
    family: int              # 4 or 6
    addr: str
    port: int
    pid: Optional[int]       # who called listen(); None if before tracing and not found
    comm: Optional[str]
    cgroup: Optional[int]
    counts: Counts
    accept_queue: Optional[int]      # None: not readable (closed, or no snapshot program)
    accept_queue_max: Optional[int]
    syn_queue: Optional[int]
    closed: bool = False


def counts_of(raw: bytes) -> Counts:
    """struct tcptrace_listen_counts (a listen_ports value, as wire.LISTEN_COUNTS lays it
    out) as Counts."""
    v = wire.LISTEN_COUNTS.unpack_from(raw)
    return Counts(v[:wire.NDROPS], *v[wire.NDROPS:])


def listener_from_dict(d: dict) -> Listener:
    """A Listener from dataclasses.asdict() (a recording's listener table)."""
    c = d["counts"]
    return Listener(**{**d, "counts": Counts(tuple(c["drops"]), c["syncookies_sent"],
                                             c["synack_retransmits"], c["passive_opens"])})


def from_kernel(key: int, raw: bytes) -> Listener:
    """struct tcptrace_listener (a listen_socks value, as wire.LISTENER lays it out) as a
    Listener."""
    (c, cgroup_id, addr, netns, pid, accept_queue, accept_queue_max, syn_queue, _inflight,
     port, family, closed, snapshot_ok, comm) = wire.LISTENER.unpack_from(raw)
    v4 = family == socket.AF_INET
    addr = socket.inet_ntop(socket.AF_INET if v4 else socket.AF_INET6, addr[:4] if v4 else addr)
    ok = bool(snapshot_ok)
    return Listener(
        key=key, netns=netns, family=4 if v4 else 6, addr=addr, port=port,
        pid=pid or None, comm=comm.split(b"\0", 1)[0].decode(errors="replace") or None,
        cgroup=cgroup_id or None, counts=counts_of(c),
        accept_queue=accept_queue if ok else None,
        accept_queue_max=accept_queue_max if ok else None,
        syn_queue=syn_queue if ok else None, closed=bool(closed))


@dataclass(slots=True)
class ListenerReport:
    """A `trace` line: one listener whose counters moved during the interval."""
    ts: float
    listener: Listener
    delta: Counts
    interval_s: float

    def to_dict(self) -> dict:
        lst = self.listener
        return {
            "type": "listener", "ts": round(self.ts, 6), "netns": lst.netns,
            "family": lst.family, "addr": lst.addr, "port": lst.port, "pid": lst.pid,
            "comm": lst.comm, "drops": dict(zip(DROP_REASONS, self.delta.drops)),
            "syncookies_sent": self.delta.syncookies_sent,
            "synack_retransmits": self.delta.synack_retransmits,
            "accept_queue": lst.accept_queue, "accept_queue_max": lst.accept_queue_max,
            "syn_queue": lst.syn_queue, "interval_s": round(self.interval_s, 3),
        }


class ListenerWatch:
    """Feeds on the kernel side's listeners once per interval; says what moved. Free of I/O:
    the session reads the kernel and forgets the closed entries this returns."""

    def __init__(self, match=None, start: Optional[float] = None):
        self.match = match          # tracker.Match, or None for every listener
        self._last: dict[int, tuple[Listener, float]] = {}
        self._previous = start      # the last update: a new listener's counts began after it

    def update(self, now: float, listeners: Iterable[Listener]) -> tuple[list[ListenerReport], list[int]]:
        """(reports for listeners whose counters moved since the last update, keys of closed
        listeners already reported in full: the caller deletes them from the kernel)."""
        reports, forget, seen = [], [], set()
        for lst in listeners:
            seen.add(lst.key)
            prev = self._last.get(lst.key)
            if prev is not None and prev[0].netns == lst.netns and prev[0].port == lst.port:
                base, since = prev[0].counts, prev[1]
            else:  # first sight, or a new listener at a reused address
                base, since = Counts(), now if self._previous is None else self._previous
            delta = lst.counts.minus(base)
            if delta.moved and (self.match is None or self.match.listener(lst)):
                reports.append(ListenerReport(now, lst, delta, now - since))
            self._last[lst.key] = (lst, now)
            if lst.closed:
                forget.append(lst.key)
                del self._last[lst.key]
        for gone in set(self._last) - seen:  # deleted in the kernel (a reused address)
            del self._last[gone]
        self._previous = now
        return reports, forget


OTHER_PORT = "other"


@dataclass
class PortFolder:
    """Bounded `port` label values: the first `limit` listening ports seen keep their own
    series (for the life of the process, so every counter stays monotonic); later ones fold
    into port="other", and `folded` counts the ports that did."""
    limit: int = 64
    _named: dict[int, str] = field(default_factory=dict)
    _folded: set[int] = field(default_factory=set)

    def label(self, port: int) -> str:
        name = self._named.get(port)
        if name is not None:
            return name
        if port and len(self._named) < self.limit:
            name = self._named[port] = str(port)
            return name
        self._folded.add(port)  # port 0: the kernel's own "no room" slot
        return OTHER_PORT

    @property
    def folded(self) -> int:
        return len(self._folded - {0})


@dataclass(frozen=True)
class Row:
    """One line of `tcptrace-bpf listeners`: a listener, its counts since the command
    started, and its passive opens per second over the last refresh."""
    listener: Listener
    opens_per_s: Optional[float]
    source: str = "kernel"   # "proc": older than the tracer and idle since: /proc's view only

    @property
    def trouble(self) -> tuple:
        """Sort key, worst first: drops, then cookies and SYN-ACK re-sends, then how full
        the accept queue is."""
        c, lst = self.listener.counts, self.listener
        fill = (lst.accept_queue or 0) / lst.accept_queue_max if lst.accept_queue_max else 0
        return (-sum(c.drops), -c.syncookies_sent, -c.synack_retransmits, -fill, lst.port)

    def to_dict(self) -> dict:
        lst, c = self.listener, self.listener.counts
        return {
            "netns": lst.netns, "family": lst.family, "addr": lst.addr, "port": lst.port,
            "pid": lst.pid, "comm": lst.comm, "accept_queue": lst.accept_queue,
            "accept_queue_max": lst.accept_queue_max, "syn_queue": lst.syn_queue,
            "drops": dict(zip(DROP_REASONS, c.drops)), "syncookies_sent": c.syncookies_sent,
            "synack_retransmits": c.synack_retransmits, "passive_opens": c.passive_opens,
            "passive_opens_per_s": None if self.opens_per_s is None else round(self.opens_per_s, 3),
            "source": self.source,
        }


def table(now: list[Listener], before: dict[int, Listener], dt: float,
          older: Iterable = ()) -> list[Row]:
    """Rows, worst first: the kernel side's open listeners (opens per second against
    `before`, taken `dt` seconds earlier), then listeners only /proc knows (procfs.Owner:
    older than the tracer, no segment since)."""
    rows, known = [], set()
    for lst in now:
        if lst.closed:
            continue
        known.add((lst.netns, lst.port))
        prev = before.get(lst.key)
        rate = None
        if prev is not None and dt > 0:
            rate = (lst.counts.passive_opens - prev.counts.passive_opens) / dt
        rows.append(Row(lst, rate))
    for o in older:
        if (o.netns, o.port) in known:
            continue
        known.add((o.netns, o.port))
        rows.append(Row(Listener(0, o.netns, o.family, o.addr, o.port, o.pid, o.comm,
                                 o.cgroup or None, Counts(), o.accept_queue, None, None),
                        None, "proc"))
    return sorted(rows, key=lambda r: r.trouble)
