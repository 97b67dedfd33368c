"""A live tracing session: loader -> decoder/tracker -> sinks, until a deadline or a signal.
Imports no typer; raises LoaderError for the CLI to report. Also the one place where SIGINT
and SIGTERM are handled (Signals), for the live loop and for `replay --listen` alike."""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass
from typing import Callable, Optional

from . import privileges, procfs
from .loader import LoaderError, Settings, BpfPrograms
from .sinks import RunStart, Sink
from .summary import RunSummary, add_lost
from .tracker import Match, Classifier

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


class Signals:
    """Inside `with Signals() as sig`, SIGINT and SIGTERM set sig.stopped instead of raising
    (a run ends cleanly: drained, summarised); the previous handlers come back on exit."""

    def __init__(self):
        self.stopped = False
        self._old: dict = {}

    def __enter__(self) -> "Signals":
        for s in (signal.SIGINT, signal.SIGTERM):
            self._old[s] = signal.signal(s, self._stop)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._old.items():
            signal.signal(s, handler)

    def _stop(self, _sig, _frame) -> None:
        self.stopped = True

    def running(self, duration: Optional[float]) -> Callable[[], bool]:
        """A test for the loop: no signal yet, and `duration` seconds (None: no limit) not
        yet over, counted from now."""
        deadline = None if duration is None else time.monotonic() + duration
        return lambda: not self.stopped and (deadline is None or time.monotonic() < deadline)

    def wait(self, duration: Optional[float]) -> None:
        going = self.running(duration)
        while going():
            time.sleep(0.1)


def epoch_offset() -> float:
    """bpf_ktime_get_ns() is CLOCK_MONOTONIC: epoch = monotonic + offset."""
    return time.time() - time.monotonic()


def lost_events(tracer: BpfPrograms, tracker: Classifier) -> dict[str, int]:
    """Everything not turned into output, kernel side and Python side, by reason."""
    return add_lost(tracer.kernel_lost(), tracker.lost)


def run(opts: Options, sink: Sink, announce: Callable[[str], None],
        raw: Optional[Sink] = None) -> RunSummary:
    """Trace until the deadline or a signal. `sink` gets the tracker's opens (and probe
    events); `raw`, if given, every wire record as it left the ring buffer (`record`)."""
    why = privileges.cannot_trace()
    if why:
        raise LoaderError(why)
    with Signals() as signals, BpfPrograms.start(opts.attach, opts.settings) as tracer:
        tracker = Classifier(epoch_offset(), opts.match)
        feed = tracker.feed_bytes

        def classify(buf: bytes) -> None:
            for item in feed(buf):
                emit(item)

        def record_and_classify(buf: bytes) -> None:
            raw.emit(buf)
            classify(buf)

        tracer.open_ring(record_and_classify if raw else classify)
        seeded = tracer.seed_listeners(procfs.listener_owners())
        started = RunStart(
            backend=tracer.caps.backend.value, epoch_offset=tracker.epoch_offset,
            lost=lambda: lost_events(tracer, tracker), tracked=tracer.tracked_sockets,
            aggregates=tracer.aggregates if opts.settings.aggregate_buckets else None)
        sinks = [s for s in (raw, sink) if s]
        for s in sinks:
            s.start(started)
        emit = sink.emit  # after start(): a sink may set up its emit there
        announce(tracer.caps.describe() + f"; {seeded} existing listeners")
        going = signals.running(opts.duration)
        timeout_ns = int(opts.half_open_timeout * 1e9)
        sweep_every_ns = int(min(max(opts.half_open_timeout / 2, 1.0), 10.0) * 1e9)
        next_sweep = time.monotonic_ns() + sweep_every_ns
        while going():
            tracer.poll(POLL_MS)
            now = time.monotonic_ns()
            for item in tracker.expire(now):
                emit(item)
            if now >= next_sweep:
                tracer.expire_half_open(now - timeout_ns)
                next_sweep = now + sweep_every_ns
            for s in sinks:
                s.flush()
        tracer.drain()
        for s in sinks:
            s.flush()
        kernel = tracer.kernel_lost()  # once: lost and kernel_lost must agree
        summary = RunSummary(
            backend=tracer.caps.backend.value,
            backends_tried={t.backend.value: t.outcome for t in tracer.caps.trials},
            counts=dict(tracker.counts), lost=add_lost(kernel, tracker.lost),
            kernel_lost=kernel, pending_requests=tracker.pending_requests,
            tracked_at_exit=tracer.tracked_sockets())
        for s in sinks:
            s.close(summary)
        return summary
