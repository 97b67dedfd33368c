"""Replay: a recording fed to the same tracker and sinks as live, by the records' own clock.
No root."""

from __future__ import annotations

from . import fastpath, recording, wire
from .listeners import ListenerWatch
from .recording import RecordingError
from .session import POLL_MS
from .sinks import RunStart, Sink
from .summary import RunSummary, add_lost
from .tracker import Match, Classifier

_EXPIRE_EVERY_NS = POLL_MS * 1_000_000  # as often as a live session would
_FLUSH_EVERY = 4096  # records: sinks batch their output, memory stays bounded


def _corrupt(path: str, n: int, exc: Exception, at: int) -> RecordingError:
    return RecordingError(f"{path}: corrupt record {n}: {exc} (byte {at})")


def _replay_python(path, reader, tracker, emit, flush) -> int:
    version, n, next_expiry = reader.header.wire_version, 0, 0
    for raw in reader.records():
        n += 1
        try:
            rec = wire.decode(raw, version)
        except wire.DecodeError as exc:
            raise _corrupt(path, n, exc, reader.offset - len(raw) - recording.FRAME.size) from None
        for item in tracker.feed(rec):
            emit(item)
        if rec.ts_ns >= next_expiry:
            for item in tracker.expire(rec.ts_ns):
                emit(item)
            next_expiry = rec.ts_ns + _EXPIRE_EVERY_NS
        if not n % _FLUSH_EVERY:
            flush()
    return n


def _replay_fast(path, reader, tracker, fast: fastpath.Batches, flush) -> int:
    """As _replay_python, a run of frames at a time: requests expire after each run (by its
    last record's clock), not between its records."""
    stride = recording.FRAME.size + reader.header.record_size
    n, next_expiry = 0, 0
    for run in reader.runs(fastpath.scan_frames):
        done, last_ts = fast.render(run, recording.FRAME.size)
        n += done
        if done * stride < len(run):  # record n + 1 does not decode: say why, as Python does
            at = reader.offset - len(run) + done * stride
            try:
                wire.decode(run[done * stride + recording.FRAME.size:(done + 1) * stride])
            except wire.DecodeError as exc:
                raise _corrupt(path, n + 1, exc, at) from None
            raise _corrupt(path, n + 1, "the compiled consumer cannot read it", at)
        if last_ts >= next_expiry:
            for item in tracker.expire(last_ts):
                fast.emit(item)
            next_expiry = last_ts + _EXPIRE_EVERY_NS
        flush()
    return n


def replay(path: str, match: Match, sink: Sink) -> RunSummary:
    """Feed every record of `path`; RecordingError at the first bad byte (records before it
    have been emitted and flushed; the sink is not closed)."""
    f, reader = recording.open_reader(path)
    with f:
        head = reader.header
        tracker = Classifier(head.epoch_offset, match)
        watch = ListenerWatch(match)

        def listeners(ns: int, table: list) -> None:
            reports, _gone = watch.update(ns / 1e9 + head.epoch_offset, table)
            for report in reports:
                emit(report)
        reader.on_listeners = listeners

        def lost() -> dict[str, int]:
            # the recording keeps the kernel's losses; Python's are made again by this tracker
            return add_lost(reader.trailer.lost if reader.trailer else {}, tracker.lost)

        sink.start(RunStart(backend=head.backend, epoch_offset=head.epoch_offset,
                            lost=lost, tracked=lambda: 0))
        emit = sink.emit
        version = head.wire_version
        # `--json`: opens rendered in C a run of frames at a time (fastpath); wire versions
        # older than the C side's take the Python path
        fast = (fastpath.for_sink(sink, tracker, emit)
                if version == wire.WIRE_VERSION else None)
        run = _replay_fast if fast else _replay_python
        try:
            n = run(path, reader, tracker, fast or emit, sink.flush)
        finally:
            sink.flush()  # what came before a bad byte is still shown
        for item in tracker.expire(reader.trailer.ended_ns):
            emit(item)
        sink.flush()
        summary = RunSummary(
            backend=head.backend, counts=dict(tracker.counts),
            opens_shown=sum(tracker.counts.values()), lost=lost(),
            kernel_lost=dict(reader.trailer.lost), pending_requests=tracker.pending_requests,
            replayed_records=n, recorded_kernel=head.kernel)
        sink.close(summary)
        return summary
