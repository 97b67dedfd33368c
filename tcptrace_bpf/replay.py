"""Replay: a recording fed to the same tracker and sinks as live, by the records' own clock.
No root."""

from __future__ import annotations

from . import recording, wire
from .listeners import ListenerWatch
from .recording import RecordingError
from .session import POLL_MS
from .sinks import RunStart, Sink
from .summary import RunSummary, add_lost
from .tracker import Match, Classifier

_EXPIRE_EVERY_NS = POLL_MS * 1_000_000  # as often as a live session would
_FLUSH_EVERY = 4096  # records: sinks batch their output, memory stays bounded


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
        version, n, next_expiry = head.wire_version, 0, 0
        try:
            for raw in reader.records():
                n += 1
                try:
                    rec = wire.decode(raw, version)
                except wire.DecodeError as exc:
                    at = reader.offset - len(raw) - recording.FRAME.size
                    raise RecordingError(f"{path}: corrupt record {n}: {exc} (byte {at})") from None
                for item in tracker.feed(rec):
                    emit(item)
                if rec.ts_ns >= next_expiry:
                    for item in tracker.expire(rec.ts_ns):
                        emit(item)
                    next_expiry = rec.ts_ns + _EXPIRE_EVERY_NS
                if not n % _FLUSH_EVERY:
                    sink.flush()
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
