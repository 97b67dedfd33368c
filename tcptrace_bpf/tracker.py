"""Turns decoded kernel records (wire.WireRecord) into opens (model.OpenAttempt): names the
path and the outcome.

No I/O: fed from the ring buffer live or from a recording alike. Time only moves through
the records' own timestamps and the `now_ns` handed to expire().
"""

from __future__ import annotations

import errno
from collections import Counter, OrderedDict
from dataclasses import dataclass, replace
from typing import Optional, Union

from . import tcp_timers, wire
from .model import OpenPath, OpenAttempt, Outcome, ProbeEvent, TcpState
from .summary import LossReason

S = TcpState
# sk_err values that name the outcome directly; any other error came from ICMP
_ERR_OUTCOME = {errno.ETIMEDOUT: Outcome.TIMEOUT, errno.ECONNRESET: Outcome.RESET}
_EXPIRY_SLACK_S = 1.0


@dataclass(frozen=True)
class Match:
    """Which opens to keep: --port (either side), --family, --pid, --netns, --cgroup, and
    what went wrong: --failed (outcome not established), --slow S (took at least S seconds,
    or re-sent a SYN or SYN-ACK); with both, an open that matches either is kept.
    Raw probe events carry no process or outcome, so --pid, --cgroup, --failed and --slow
    leave them out. A live run decides the same in the kernel (bpf/tcptrace.bpf.c,
    "filters"); this is what replay applies, and what a live run checks again."""
    port: Optional[int] = None
    family: Optional[int] = None
    pid: Optional[int] = None
    netns: Optional[int] = None
    cgroup: Optional[int] = None
    failed: bool = False
    slow: Optional[float] = None

    @property
    def by_result(self) -> bool:
        return self.failed or self.slow is not None

    def __call__(self, item: Union[OpenAttempt, ProbeEvent]) -> bool:
        if self.port is not None and self.port not in (item.sport, item.dport):
            return False
        if self.family is not None and item.family != self.family:
            return False
        if self.netns is not None and item.netns != self.netns:
            return False
        if self.pid is None and self.cgroup is None and not self.by_result:
            return True
        if isinstance(item, ProbeEvent):
            return False
        if not ((self.pid is None or item.pid == self.pid)
                and (self.cgroup is None or item.cgroup == self.cgroup)):
            return False
        return not self.by_result or self._went_wrong(item)

    def _went_wrong(self, item: OpenAttempt) -> bool:
        if self.failed and item.outcome is not Outcome.ESTABLISHED:
            return True
        if self.slow is None:
            return False
        if item.syn_retransmits or item.synack_retransmits:
            return True
        # in whole nanoseconds, as the kernel compares (slow_ns(), TT_FILTER_SLOW_NS)
        return item.duration_s is not None and round(item.duration_s * 1e9) >= self.slow_ns

    @property
    def slow_ns(self) -> int:
        return round(self.slow * 1e9) if self.slow is not None else 0

    def listener(self, lst) -> bool:
        """The same filters for a listening socket (listeners.Listener): its port, its
        owner (who called listen())."""
        return ((self.port is None or lst.port == self.port)
                and (self.family is None or lst.family == self.family)
                and (self.netns is None or lst.netns == self.netns)
                and (self.pid is None or lst.pid == self.pid)
                and (self.cgroup is None or lst.cgroup == self.cgroup))


@dataclass
class _PendingRequest:
    first: wire.WireRecord
    last: wire.WireRecord

    def deadline_ns(self) -> int:
        """When the kernel drops the request: after `budget` timer-driven re-sends."""
        start = self.first.start_ns or self.first.ts_ns - int(tcp_timers.TIMEOUT_INIT_S * 1e9)
        life = tcp_timers.synack_resend_times(self.first.synack_budget)[-1]
        return start + int((life + _EXPIRY_SLACK_S) * 1e9)


Output = Union[OpenAttempt, ProbeEvent]
_STATE_NAMES: dict[tuple, tuple] = {}


class Classifier:
    def __init__(self, epoch_offset: float, match: Match = Match(), max_pending: int = 65536):
        self.epoch_offset = epoch_offset  # epoch seconds = monotonic seconds + offset
        self.match = match
        self.max_pending = max_pending
        self.counts: Counter = Counter()  # (path, outcome) -> resolved opens shown
        # (path, outcome) -> the part of counts made here, not by a kernel record: requests
        # that timed out (a live run adds them to the kernel's own counts)
        self.expired: Counter = Counter()
        self.lost: Counter = Counter()    # reason -> records not turned into output
        self._pending: "OrderedDict[tuple, _PendingRequest]" = OrderedDict()

    # -- input -------------------------------------------------------------------------
    def feed_bytes(self, buf: bytes) -> list[Output]:
        try:
            wrec = wire.decode(buf)
        except wire.DecodeError:
            self.lost[LossReason.DECODE_ERROR.value] += 1
            return []
        return self.feed(wrec)

    def feed(self, wrec: wire.WireRecord) -> list[Output]:
        if wrec.kind == wire.KIND_OPEN:
            out = self._open(wrec)
            return [out] if out else []
        if wrec.kind == wire.KIND_REQ_SYNACK_RTX:
            self._request_resent(wrec)
            return []
        event = self._event(wrec)
        return [event] if self.match(event) else []

    def expire(self, now_ns: int) -> list[OpenAttempt]:
        """Report requests whose SYN-ACK budget ran out by `now_ns` (monotonic)."""
        out = []
        for key in [k for k, p in self._pending.items() if p.deadline_ns() <= now_ns]:
            p = self._pending.pop(key)
            attempt = self._keep(self._request_timeout(p))
            if attempt:
                self.expired[(attempt.path, attempt.outcome)] += 1
                out.append(attempt)
        return out

    @property
    def pending_requests(self) -> int:
        return len(self._pending)

    # -- classification ----------------------------------------------------------------
    def _open(self, wrec: wire.WireRecord) -> Optional[OpenAttempt]:
        path = self._path(wrec)
        if path is None:
            self.lost[LossReason.UNKNOWN_TRANSITION.value] += 1
            return None
        if path is OpenPath.PASSIVE and self._pending:
            self._pending.pop(_tuple_key(wrec), None)  # its request, if it was re-sending
        outcome = self._outcome(wrec)
        if wrec.open_flags & wire.OF_SYNCOOKIE:
            duration = None  # the kernel kept no SYN-ACK send time for a cookie
        elif path is OpenPath.PASSIVE and outcome is Outcome.ESTABLISHED and wrec.passive_us:
            duration = wrec.passive_us / 1e6
        else:
            duration = (wrec.ts_ns - wrec.start_ns) / 1e9 if wrec.start_ns else None
        return self._keep(self._attempt(wrec, path, outcome, duration,
                                        wrec.syn_retrans, wrec.synack_retrans))

    @staticmethod
    def _path(wrec: wire.WireRecord) -> Optional[OpenPath]:
        st = wrec.states
        if len(st) < 2:
            return None
        if st[0] == S.LISTEN and st[1] == S.SYN_RECV:
            return OpenPath.PASSIVE
        if st[0] != S.CLOSE or st[1] != S.SYN_SENT:
            return None
        if len(st) > 2 and st[2] == S.SYN_RECV:  # only crossed SYNs lead SYN_SENT > SYN_RECV
            if wrec.saddr == wrec.daddr and wrec.sport == wrec.dport:
                return OpenPath.SELF
            return OpenPath.SIMULTANEOUS
        return OpenPath.ACTIVE

    @staticmethod
    def _outcome(wrec: wire.WireRecord) -> Outcome:
        last = wrec.states[-1]
        if last == S.ESTABLISHED:
            return Outcome.ESTABLISHED
        if last != S.CLOSE:
            return Outcome.ABORTED  # e.g. SYN_RECV > FIN_WAIT1: closed mid-handshake
        err, rst = wrec.sk_err, bool(wrec.flags & wire.F_RST_IN)
        if err == errno.ECONNREFUSED:
            # an RST in SYN_SENT; without one, an ICMP port unreachable said it
            return Outcome.REFUSED if rst else Outcome.UNREACHABLE
        if err in _ERR_OUTCOME:
            return _ERR_OUTCOME[err]
        if err:
            return Outcome.UNREACHABLE  # EHOSTUNREACH, ENETUNREACH, ... (icmp_err_convert)
        if not rst and not wrec.sport and len(wrec.states) == 3 and wrec.states[1] == S.SYN_SENT:
            # connect() found no free local port: closed inside connect(), before a port was
            # taken, so before any SYN (bpf/tcptrace.bpf.c open_outcome() says the same)
            return Outcome.PORT_EXHAUSTED
        return Outcome.RESET if rst else Outcome.ABORTED

    def _attempt(self, wrec, path, outcome, duration, syn_rtx, synack_rtx) -> OpenAttempt:
        names = _STATE_NAMES.get(wrec.states)
        if names is None:  # a handful of sequences recur: name each once
            names = tuple(S.name_of(s) for s in wrec.states)
            if len(_STATE_NAMES) < 4096:
                _STATE_NAMES[wrec.states] = names
        return OpenAttempt(
            ts=wrec.ts_ns / 1e9 + self.epoch_offset, path=path, outcome=outcome,
            family=wrec.family, saddr=wrec.saddr, sport=wrec.sport, daddr=wrec.daddr,
            dport=wrec.dport, states=names,
            duration_s=duration, syn_retransmits=syn_rtx, synack_retransmits=synack_rtx,
            pid=wrec.pid or None, comm=wrec.comm or None, netns=wrec.netns,
            # the kernel keeps no error for a port search that failed: connect() returned it
            errno=errno.EADDRNOTAVAIL if outcome is Outcome.PORT_EXHAUSTED else wrec.sk_err,
            cgroup=wrec.cgroup_id or None, flags=wire.open_flag_names(wrec.open_flags))

    def _keep(self, attempt: OpenAttempt) -> Optional[OpenAttempt]:
        if not self.match(attempt):
            return None
        self.counts[(attempt.path, attempt.outcome)] += 1
        return attempt

    # -- listener request sockets ------------------------------------------------------
    def _request_resent(self, wrec: wire.WireRecord) -> None:
        key = _tuple_key(wrec)
        p = self._pending.get(key)
        if p is None:
            if len(self._pending) >= self.max_pending:
                self._pending.popitem(last=False)
                self.lost[LossReason.REQUEST_EVICTED.value] += 1
            self._pending[key] = _PendingRequest(wrec, wrec)
        else:
            p.last = wrec

    def _request_timeout(self, p: _PendingRequest) -> OpenAttempt:
        # The request never became a socket: it went NEW_SYN_RECV until the kernel gave up.
        last = p.last
        ts_ns = p.deadline_ns() - int(_EXPIRY_SLACK_S * 1e9)
        start = p.first.start_ns
        wrec = replace(last, ts_ns=ts_ns, states=(S.LISTEN, S.NEW_SYN_RECV, S.CLOSE))
        return self._attempt(wrec, OpenPath.PASSIVE, Outcome.TIMEOUT,
                            (ts_ns - start) / 1e9 if start else None, 0, last.synack_retrans)

    # -- raw probe events (--events) ---------------------------------------------------
    def _event(self, wrec: wire.WireRecord) -> ProbeEvent:
        return ProbeEvent(
            ts=wrec.ts_ns / 1e9 + self.epoch_offset,
            probe=wire.PROBE_NAMES.get(wrec.probe, str(wrec.probe)),
            skaddr=wrec.skaddr, family=wrec.family, saddr=wrec.saddr, sport=wrec.sport,
            daddr=wrec.daddr, dport=wrec.dport,
            old_state=S.name_of(wrec.states[0]) if wrec.states else None,
            new_state=S.name_of(wrec.states[1]) if len(wrec.states) > 1 else None,
            netns=wrec.netns)


def _tuple_key(wrec: wire.WireRecord) -> tuple:
    return (wrec.netns, wrec.family, wrec.saddr, wrec.sport, wrec.daddr, wrec.dport)
