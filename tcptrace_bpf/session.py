"""A live tracing session: loader -> decoder/tracker -> sink, until a deadline or a signal.
Imports no typer; raises LoaderError for the CLI to report."""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass
from typing import Callable, Optional

from . import privileges, procfs
from .loader import LoaderError, Settings, Tracer
from .tracker import Match, Tracker

POLL_MS = 200  # also the resolution of request-socket expiry


@dataclass
class Options:
    attach: str = "auto"
    match: Match = Match()
    duration: Optional[float] = None
    settings: Settings = Settings()
    # A kernel table entry with no activity for this long is an open whose end no hook saw
    # (or that began before tracing): dropped and counted as half_open_expired. Real
    # handshakes end sooner: SYN_SENT gives up after about 127 s with tcp_syn_retries=6.
    half_open_timeout: float = 300.0


def epoch_offset() -> float:
    """bpf_ktime_get_ns() is CLOCK_MONOTONIC: epoch = monotonic + offset."""
    return time.time() - time.monotonic()


def sum_lost(*counts: dict) -> dict[str, int]:
    """Loss counters by reason, added up (kernel side and Python side share some reasons)."""
    total: dict[str, int] = {}
    for c in counts:
        for reason, n in c.items():
            total[reason] = total.get(reason, 0) + n
    return total


def lost_events(tracer: Tracer, tracker: Tracker) -> dict[str, int]:
    """Everything not turned into output, kernel side and Python side, by reason."""
    return sum_lost(tracer.kernel_lost(), tracker.lost)


def run(opts: Options, emit: Callable[[object], None], flush: Callable[[], None],
        announce: Callable[[str], None],
        on_start: Optional[Callable[[Tracer, Tracker], None]] = None,
        on_raw: Optional[Callable[[bytes], None]] = None) -> tuple[Tracker, dict]:
    missing = privileges.missing()
    if missing:
        raise LoaderError(missing)
    stop = {"now": False}

    def _stop(_sig, _frame):
        stop["now"] = True

    old = {s: signal.signal(s, _stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with Tracer.start(opts.attach, opts.settings) as tracer:
            offset = epoch_offset()
            tracker = Tracker(offset, opts.match)

            def on_record(buf: bytes) -> None:
                if on_raw:
                    on_raw(buf)
                for item in tracker.feed_bytes(buf):
                    emit(item)

            tracer.open_ring(on_record)
            seeded = tracer.seed_listeners(procfs.listener_owners())
            if on_start:
                on_start(tracer, tracker)
            announce(tracer.caps.describe() + f"; {seeded} existing listeners")
            deadline = None if opts.duration is None else time.monotonic() + opts.duration
            timeout_ns = int(opts.half_open_timeout * 1e9)
            sweep_every_ns = int(min(max(opts.half_open_timeout / 2, 1.0), 10.0) * 1e9)
            next_sweep = time.monotonic_ns() + sweep_every_ns
            while not stop["now"] and (deadline is None or time.monotonic() < deadline):
                tracer.poll(POLL_MS)
                now = time.monotonic_ns()
                for item in tracker.expire(now):
                    emit(item)
                if now >= next_sweep:
                    tracer.expire_half_open(now - timeout_ns)
                    next_sweep = now + sweep_every_ns
                flush()
            tracer.drain()
            flush()
            lost = lost_events(tracer, tracker)
            extra = {"backend": tracer.caps.backend.value,
                     "unresolved requests": tracker.pending_requests,
                     "sockets mid-handshake at exit": tracer.tracked_sockets()}
            return tracker, {"lost": lost, "kernel_lost": tracer.kernel_lost(),
                             "extra": extra, "ended_ns": time.monotonic_ns(),
                             "epoch_offset": offset}
    finally:
        for s, h in old.items():
            signal.signal(s, h)
