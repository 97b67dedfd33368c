"""Human-readable rendering: one line per open, and the end-of-run summary."""

from __future__ import annotations

import time

from ..listeners import DROP_REASONS, ListenerReport
from ..model import OpenAttempt, ProbeEvent
from ..summary import RunSummary
from . import Lines


def _endpoint(addr: str, port: int, family: int) -> str:
    return f"[{addr}]:{port}" if family == 6 else f"{addr}:{port}"


def _duration(seconds) -> str:
    if seconds is None:
        return "?"
    return f"{seconds * 1e3:.2f}ms" if seconds < 1 else f"{seconds:.2f}s"


def _clock(ts: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts)) + f".{int(ts % 1 * 1000):03d}"


def _queue(now, limit) -> str:
    return "?" if now is None else f"{now}/{limit}"


def render_listener(r: ListenerReport) -> str:
    """e.g. 12:00:01.000 listener 127.0.0.1:8080 accept queue full: 18 SYNs/ACKs dropped in
    1.0s; accept queue 2/1, SYN queue 0; nginx[812] netns 4026531840"""
    lst, d = r.listener, r.delta
    what = [f"{why.replace('_', ' ')}: {n} dropped" for why, n in zip(DROP_REASONS, d.drops) if n]
    if d.syncookies_sent:
        what.append(f"{d.syncookies_sent} SYN cookies sent")
    if d.synack_retransmits:
        what.append(f"{d.synack_retransmits} SYN-ACKs re-sent")
    who = f" {lst.comm}[{lst.pid}]" if lst.pid else ""
    return (f"{_clock(r.ts)} listener     {_endpoint(lst.addr, lst.port, lst.family)} "
            f"{', '.join(what)} in {r.interval_s:.1f}s; accept queue "
            f"{_queue(lst.accept_queue, lst.accept_queue_max)}, SYN queue "
            f"{'?' if lst.syn_queue is None else lst.syn_queue}{who} netns {lst.netns}")


def render(item) -> str:
    if type(item) is ListenerReport:
        return render_listener(item)
    clock = _clock(item.ts)
    local = _endpoint(item.saddr, item.sport, item.family)
    peer = _endpoint(item.daddr, item.dport, item.family)
    if isinstance(item, ProbeEvent):
        return f"{clock} event {item.probe} {item.old_state}>{item.new_state} {local} {peer}"
    rec: OpenAttempt = item
    who = f" {rec.comm}[{rec.pid}]" if rec.pid else ""
    rtx = ""
    if rec.syn_retransmits or rec.synack_retransmits:
        rtx = f" rtx syn={rec.syn_retransmits} synack={rec.synack_retransmits}"
    flags = "".join(f" {f}" for f in rec.flags)
    return (f"{clock} {rec.path.value:<12} {rec.outcome.value:<11} {local} > {peer} "
            f"{_duration(rec.duration_s)}{rtx}{flags}{who}")


def sink(out=None) -> Lines:
    """`trace` / `replay` without --json: one line per open or probe event."""
    return Lines(render, out)


def summary(run: RunSummary) -> str:
    """The end-of-run summary on stderr (README "What you see")."""
    backend = run.backend
    if run.replayed_records is not None:
        backend = (f"{backend} (replay of {run.replayed_records} records "
                   f"from kernel {run.recorded_kernel})")
    lines = [f"tcptrace-bpf summary (backend {backend})"]
    if run.counts:
        by_name = sorted(run.counts.items(), key=lambda kv: (kv[0][0].value, kv[0][1].value))
        for (path, outcome), n in by_name:
            lines.append(f"  {path.value:<12} {outcome.value:<11} {n}")
    else:
        lines.append("  no connection opens seen")
    if run.opens_shown is not None and run.opens_not_shown:
        why = ", ".join(f"{k}={v}" for k, v in sorted(run.lost.items()) if v) or "none counted"
        lines.append(f"  opens not shown: {run.opens_not_shown} of {run.opens_total} "
                     f"(counted in the kernel; records lost: {why})")
    detail = ", ".join(f"{k}={v}" for k, v in sorted(run.lost.items()))
    lines.append(f"  events lost: {run.lost_total}" + (f" ({detail})" if detail else ""))
    lines.append(f"  unresolved requests: {run.pending_requests}")
    if run.tracked_at_exit is not None:
        lines.append(f"  sockets mid-handshake at exit: {run.tracked_at_exit}")
    if run.records_written is not None:
        lines.append(f"  records written: {run.records_written}")
    return "\n".join(lines)
