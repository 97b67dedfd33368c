"""A live tracing session: loader -> decoder/tracker -> sink, until a deadline or a signal.
Imports no typer; raises LoaderError for the CLI to report."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from typing import Callable, Optional

from .loader import LoaderError, Settings, Tracer
from .tracker import Match, Tracker

POLL_MS = 200  # also the resolution of request-socket expiry


@dataclass
class Options:
    attach: str = "auto"
    match: Match = Match()
    duration: Optional[float] = None
    settings: Settings = Settings()


def epoch_offset() -> float:
    """bpf_ktime_get_ns() is CLOCK_MONOTONIC: epoch = monotonic + offset."""
    return time.time() - time.monotonic()


def lost_events(tracer: Tracer, tracker: Tracker) -> dict[str, int]:
    """Everything not turned into output, kernel side and Python side, by reason."""
    return {**tracer.kernel_lost(), **tracker.lost}


def run(opts: Options, emit: Callable[[object], None], flush: Callable[[], None],
        announce: Callable[[str], None],
        on_start: Optional[Callable[[Tracer, Tracker], None]] = None) -> tuple[Tracker, dict]:
    if os.geteuid() != 0:
        raise LoaderError("must run as root (loading BPF programs needs CAP_BPF, "
                          "CAP_PERFMON and CAP_SYS_ADMIN on this kernel)")
    stop = {"now": False}

    def _stop(_sig, _frame):
        stop["now"] = True

    old = {s: signal.signal(s, _stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with Tracer.start(opts.attach, opts.settings) as tracer:
            tracker = Tracker(epoch_offset(), opts.match)

            def on_record(buf: bytes) -> None:
                for item in tracker.feed_bytes(buf):
                    emit(item)

            tracer.open_ring(on_record)
            if on_start:
                on_start(tracer, tracker)
            announce(tracer.caps.describe())
            deadline = None if opts.duration is None else time.monotonic() + opts.duration
            while not stop["now"] and (deadline is None or time.monotonic() < deadline):
                tracer.poll(POLL_MS)
                for item in tracker.expire(time.monotonic_ns()):
                    emit(item)
                flush()
            tracer.drain()
            flush()
            lost = lost_events(tracer, tracker)
            extra = {"backend": tracer.caps.backend.value,
                     "unresolved requests": tracker.pending_requests,
                     "sockets mid-handshake at exit": tracer.tracked_sockets()}
            return tracker, {"lost": lost, "extra": extra}
    finally:
        for s, h in old.items():
            signal.signal(s, h)
