"""Replay: a recording fed to the same tracker as live, by the records' own clock. No root."""

from __future__ import annotations

from typing import Callable

from . import recording, wire
from .recording import RecordingError
from .session import POLL_MS, sum_lost
from .tracker import Match, Tracker

_EXPIRE_EVERY_NS = POLL_MS * 1_000_000  # as often as a live session would
_FLUSH_EVERY = 4096  # records: sinks batch their output, memory stays bounded


def replay(path: str, match: Match, emit: Callable[[object], None],
           flush: Callable[[], None]) -> tuple[Tracker, dict]:
    """Feed every record of `path`; RecordingError at the first bad byte (records before it
    have been emitted)."""
    f, reader = recording.open_reader(path)
    with f:
        head = reader.header
        tracker = Tracker(head.epoch_offset, match)
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
                    flush()
        finally:
            flush()  # what came before a bad byte is still shown
        for item in tracker.expire(reader.trailer.ended_ns):
            emit(item)
        flush()
        extra = {"backend": f"{head.backend} (replay of {n} records from kernel {head.kernel})",
                 "unresolved requests": tracker.pending_requests}
        # the recording keeps the kernel's losses; Python's are made again by this tracker
        return tracker, {"lost": sum_lost(reader.trailer.lost, tracker.lost), "extra": extra}
