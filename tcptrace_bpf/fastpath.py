"""`--json` at full churn: opens decoded, classified, filtered and rendered in C
(_fastpath.c, built by setup.py), byte for byte as tracker.Classifier + sinks/jsonl.render
would, one output write per batch.

Optional at run time: without the compiled module, or with TCPTRACE_NO_FASTPATH=1 in the
environment, sessions take the Python path. The C side renders only opens it can decide alone;
the rest comes back as bytes for the tracker, in order among themselves (other kinds, records
that do not decode, opens of no known path, and passive opens while the tracker holds pending
requests, whose request such an open ends). Order between the two is per batch: a batch's C
lines are written first, then the lines of the records it gave back."""

from __future__ import annotations

import os
from typing import Callable, Optional

from .model import OpenPath, Outcome
from .tracker import Classifier

try:
    from . import _fastpath
except ImportError:  # not built: the Python path
    _fastpath = None

# the C side's counts, index path * len(Outcome) + outcome (TT_PATH_*, TT_OUT_*)
_PAIRS = tuple((p, o) for p in OpenPath for o in Outcome)


def available() -> bool:
    return _fastpath is not None and os.environ.get("TCPTRACE_NO_FASTPATH", "") in ("", "0")


def scan_frames(buf: bytes, record_size: int) -> int:
    return _fastpath.scan_frames(buf, record_size)


class Batches:
    """A tracker's opens rendered in C, written by `write` (bytes of whole lines); what the C
    side gives back goes through the tracker to `emit`."""

    def __init__(self, tracker: Classifier, write: Callable[[bytes], None],
                 emit: Callable[[object], None]):
        m = tracker.match
        self.renderer = _fastpath.Renderer(
            tracker.epoch_offset, m.port, m.family, m.pid, m.netns, m.cgroup, m.failed,
            m.slow_ns if m.slow is not None else None)
        self.tracker, self.write, self.emit = tracker, write, emit

    def _settle(self, lines: bytes, back: list, counts: tuple) -> None:
        if lines:
            self.write(lines)
        tracker_counts = self.tracker.counts
        for i, c in enumerate(counts):
            if c:
                tracker_counts[_PAIRS[i]] += c
        feed, emit = self.tracker.feed_bytes, self.emit
        for raw in back:
            for item in feed(raw):
                emit(item)

    def drain(self, ring) -> int:
        """Everything committed in a ringbuf.RingReader's buffer; returns the records taken."""
        lines, back, counts, n, _ = self.renderer.drain(
            ring.cons_map, ring.prod_map, ring.data_offset, ring.mask,
            self.tracker.pending_requests > 0)
        self._settle(lines, back, counts)
        return n

    def render(self, buf, frame: int = 0, stop_on_bad: bool = True) -> tuple[int, int]:
        """Records of `buf` (each after `frame` bytes), up to the first that does not decode
        (or all of them, those given back, with stop_on_bad False): returns (records taken,
        ts_ns of the last one)."""
        lines, back, counts, done, last_ts = self.renderer.render(
            buf, self.tracker.pending_requests > 0, frame, stop_on_bad)
        self._settle(lines, back, counts)
        return done, last_ts


def for_sink(sink, tracker: Classifier, emit: Callable[[object], None]) -> Optional[Batches]:
    """Batches for a sink that takes rendered bytes (jsonl.JsonLines.write_bytes), when the
    module is there; None for the Python path."""
    write = getattr(sink, "write_bytes", None)
    if write is None or not available():
        return None
    try:
        return Batches(tracker, write, emit)
    except (OverflowError, ValueError, TypeError):  # a filter value C cannot hold: Python's
        return None
