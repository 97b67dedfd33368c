"""A live tracing session: loader -> decoder/tracker -> sinks, until a deadline or a signal.
Imports no typer; raises LoaderError for the CLI to report. Also the one place where SIGINT
and SIGTERM are handled (Signals), for the live loop and for `replay --listen` alike."""

from __future__ import annotations

import signal
import time
from collections import Counter
from dataclasses import dataclass, replace
from typing import Callable, Optional

from . import fastpath, privileges, procfs
from .loader import LoaderError, Settings, BpfPrograms
from .sinks import RunStart, Sink
from .summary import RunSummary, add_lost
from .listeners import ListenerWatch, Row, table
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
    # the listener side: read every listener this often; `listener_lines`: emit a report
    # (listeners.ListenerReport) for each one whose counters moved (trace), or only keep the
    # kernel's table tidy (export reads it at scrape time)
    listener_interval: float = 1.0
    listener_lines: bool = False


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
    settings = replace(opts.settings, match=opts.match)  # the kernel filters too
    with Signals() as signals, BpfPrograms.start(opts.attach, settings) as tracer:
        tracker = Classifier(epoch_offset(), opts.match)
        feed = tracker.feed_bytes

        def classify(buf: bytes) -> None:
            for item in feed(buf):
                emit(item)

        def record_and_classify(buf: bytes) -> None:
            raw.emit(buf)
            classify(buf)

        # `--json`: opens rendered in C a ring's worth at a time (fastpath), the rest as below
        fast = None if raw else fastpath.for_sink(sink, tracker, lambda item: emit(item))
        tracer.open_ring(record_and_classify if raw else classify,
                         on_batch=fast.drain if fast else None)
        seeded = tracer.seed_listeners(procfs.listener_owners())
        started = RunStart(
            backend=tracer.caps.backend.value, epoch_offset=tracker.epoch_offset,
            lost=lambda: lost_events(tracer, tracker), tracked=tracer.tracked_sockets,
            aggregates=tracer.aggregates if opts.settings.aggregate_buckets else None,
            listen_ports=tracer.listen_ports if tracer.listener_side else None,
            listeners=tracer.listeners if tracer.listener_side else None)
        sinks = [s for s in (raw, sink) if s]
        for s in sinks:
            s.start(started)
        emit = sink.emit  # after start(): a sink may set up its emit there
        announce(tracer.caps.describe() + f"; {seeded} existing listeners")
        going = signals.running(opts.duration)
        watch = ListenerWatch(opts.match, time.time())
        listen_every_ns = int(opts.listener_interval * 1e9)
        next_listen = time.monotonic_ns() + listen_every_ns

        def listeners() -> None:
            """One interval of the listener side: reports, and closed entries let go."""
            if not tracer.listener_side:
                return
            table = tracer.listeners()
            if raw is not None:  # record: replay makes the same lines of it
                raw.listeners(time.monotonic_ns(), table)
            reports, gone = watch.update(time.time(), table)
            for key in gone:
                tracer.forget_listener(key)
            if opts.listener_lines:
                for report in reports:
                    emit(report)

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
            if now >= next_listen:
                listeners()
                next_listen = now + listen_every_ns
            for s in sinks:
                s.flush()
        tracer.drain()
        listeners()  # the last interval's
        for s in sinks:
            s.flush()
        kernel = tracer.kernel_lost()  # once: lost and kernel_lost must agree
        counts = Counter(tracer.open_counts())  # after the last drain: every open it counted
        counts.update(tracker.expired)
        summary = RunSummary(
            backend=tracer.caps.backend.value,
            backends_tried={t.backend.value: t.outcome for t in tracer.caps.trials},
            counts=dict(counts), opens_shown=sum(tracker.counts.values()),
            records_read=tracer.records_read, lost=add_lost(kernel, tracker.lost),
            kernel_lost=kernel, pending_requests=tracker.pending_requests,
            tracked_at_exit=tracer.tracked_sockets())
        for s in sinks:
            s.close(summary)
        return summary


def watch_listeners(attach: str, interval: float, show: Callable[[list[Row], float], bool],
                    duration: Optional[float] = None,
                    announce: Callable[[str], None] = lambda _m: None) -> None:
    """`tcptrace-bpf listeners`: every `interval` seconds, the table of listeners (their
    counts since this began) to `show`, until it returns False, the deadline or a signal."""
    why = privileges.cannot_trace()
    if why:
        raise LoaderError(why)
    with Signals() as signals, BpfPrograms.start(attach, Settings()) as tracer:
        if not tracer.listener_side:
            raise LoaderError(f"the listener side could not attach: {tracer.caps.listener_side}")
        announce(tracer.caps.describe())
        before, since = {lst.key: lst for lst in tracer.listeners()}, time.monotonic()
        going = signals.running(duration)
        while going():
            end = time.monotonic() + interval
            while going() and time.monotonic() < end:
                time.sleep(min(0.1, max(end - time.monotonic(), 0)))
            now, at = tracer.listeners(), time.monotonic()
            for lst in now:
                if lst.closed:
                    tracer.forget_listener(lst.key)
            if not show(table(now, before, at - since, procfs.listener_owners()), at - since):
                return
            before, since = {lst.key: lst for lst in now}, at
