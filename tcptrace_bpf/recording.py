"""Recordings: the kernel's records, as they came off the ring buffer, for offline replay.

Layout (all little-endian):
    b"TCPTRACE-BPF RECORDING\\n"        magic line
    one JSON line                        header: format, wire_version, record_size, kernel,
                                         backend, clock, epoch_offset, events, tool_version
    frames: u16 type, u16 length, payload
        type 1: one wire record (tcptrace_bpf.wire, of the header's wire_version)
        type 2: trailer, JSON: ended_ns (monotonic), lost (kernel-side counters by reason;
                replay's tracker counts the Python-side ones again)
        type 3: the listener table, JSON: ns (monotonic), listeners (listeners.Listener as
                dicts), once per listener interval; replay makes trace's listener lines of
                them (recordings without any still read: no listener lines)

A reader refuses a newer `format` or an unknown wire version by name; older wire versions are
decoded with their own layout (wire.py keeps them). A recording without its trailer was cut
short (the recorder was killed): every record before the cut is still read, then the reader
says where the file ends.
"""

from __future__ import annotations

import json
import struct
import time
from dataclasses import asdict, dataclass, field
from typing import BinaryIO, Callable, Iterator, Optional

from . import wire

MAGIC = b"TCPTRACE-BPF RECORDING\n"
FORMAT = 1
CLOCK = "CLOCK_MONOTONIC"
FRAME = struct.Struct("<HH")
FRAME_RECORD, FRAME_TRAILER, FRAME_LISTENERS = 1, 2, 3
_MAX_HEADER = 1 << 16


class RecordingError(Exception):
    """The file is not a recording this version can read; the message says where and why."""


@dataclass
class Header:
    kernel: str
    backend: str
    epoch_offset: float        # epoch seconds = monotonic seconds + this
    events: bool = False
    wire_version: int = wire.WIRE_VERSION
    record_size: int = wire.RECORD_SIZE
    tool_version: str = ""
    format: int = FORMAT
    clock: str = CLOCK

    def to_json(self) -> bytes:
        return json.dumps(self.__dict__, sort_keys=True).encode() + b"\n"


@dataclass
class Trailer:
    ended_ns: int
    lost: dict = field(default_factory=dict)


class Writer:
    def __init__(self, f: BinaryIO, header: Header):
        self.f = f
        self.records = 0
        f.write(MAGIC + header.to_json())

    def write(self, raw: bytes) -> None:
        self.f.write(FRAME.pack(FRAME_RECORD, len(raw)) + raw)
        self.records += 1

    def listeners(self, ns: int, table: list) -> None:
        body = json.dumps({"ns": ns, "listeners": [asdict(x) for x in table]},
                          separators=(",", ":")).encode()
        self.f.write(FRAME.pack(FRAME_LISTENERS, len(body)) + body)

    def close(self, trailer: Trailer) -> None:
        body = json.dumps(trailer.__dict__, sort_keys=True).encode()
        self.f.write(FRAME.pack(FRAME_TRAILER, len(body)) + body)
        self.f.flush()


class Recorder:
    """`record` as a sink of raw wire records (sinks.Sink): the header once the run says its
    backend and clock, one frame per record, the end marker with the kernel's losses."""

    def __init__(self, f: BinaryIO, kernel: str, events: bool, tool_version: str):
        self.f, self.kernel, self.events, self.tool_version = f, kernel, events, tool_version
        self.writer: Optional[Writer] = None

    @property
    def records(self) -> int:
        return self.writer.records if self.writer else 0

    def start(self, run) -> None:
        self.writer = Writer(self.f, Header(
            kernel=self.kernel, backend=run.backend, epoch_offset=run.epoch_offset,
            events=self.events, tool_version=self.tool_version))
        self.emit = self.writer.write  # the hot path: one call per record

    def emit(self, raw: bytes) -> None:  # replaced by the writer's own at start()
        raise RuntimeError("Recorder.emit before start")

    def flush(self) -> None:
        self.f.flush()

    def listeners(self, ns: int, table: list) -> None:
        """The listener table (listeners.Listener) as read at monotonic `ns`."""
        self.writer.listeners(ns, table)

    def close(self, summary) -> None:
        # the session has drained the ring: the recording ends now, on the records' clock
        self.writer.close(Trailer(time.monotonic_ns(), dict(summary.kernel_lost)))


class Reader:
    """Iterate `records()` (raw wire bytes); `trailer` is set once they are exhausted."""

    def __init__(self, f: BinaryIO, name: str):
        self.f, self.name = f, name
        self.trailer: Optional[Trailer] = None
        # called with (monotonic ns, [listeners.Listener]) for each listener table, in order
        self.on_listeners: Optional[Callable[[int, list], None]] = None
        self.offset = 0
        self.header = self._header()

    def _fail(self, where: int, why: str) -> RecordingError:
        return RecordingError(f"{self.name}: {why} (byte {where})")

    def _header(self) -> Header:
        magic = self.f.read(len(MAGIC))
        if magic != MAGIC:
            raise self._fail(0, "not a tcptrace-bpf recording (bad magic)")
        line = self.f.readline(_MAX_HEADER)
        start, self.offset = len(MAGIC), len(MAGIC) + len(line)
        if not line.endswith(b"\n"):
            raise self._fail(start, "truncated header")
        try:
            doc = json.loads(line)
        except ValueError as exc:
            raise self._fail(start, f"corrupt header ({exc})") from None
        if not isinstance(doc, dict):
            raise self._fail(start, "corrupt header (not an object)")
        if doc.get("format") != FORMAT:
            raise self._fail(start, f"recording format {doc.get('format')!r}; this "
                                    f"tcptrace-bpf reads format {FORMAT} (a newer version wrote it?)")
        try:
            h = Header(**doc)
        except TypeError as exc:
            raise self._fail(start, f"corrupt header ({exc})") from None
        try:
            size = wire.record_size(h.wire_version)
        except wire.DecodeError as exc:
            raise self._fail(start, str(exc)) from None
        if h.record_size != size or h.clock != CLOCK:
            raise self._fail(start, f"header says {h.record_size}-byte records on {h.clock}; "
                                    f"wire version {h.wire_version} has {size} on {CLOCK}")
        return h

    def records(self) -> Iterator[bytes]:
        """Raw records in order; RecordingError at the first corrupt or missing byte."""
        n = 0
        while True:
            body = self._next(n)
            if body is None:
                return
            n += 1
            yield body

    def runs(self, scan: Callable[[bytes, int], int], chunk: int = 1 << 20) -> Iterator[bytes]:
        """records() in runs, for a consumer of many at once (fastpath): each a buffer of
        whole record frames (FRAME + record), scan(buf, record_size) giving the length of the
        run that begins buf; the other frames are handled as records() handles them."""
        f, size, n = self.f, self.header.record_size, 0
        while True:
            buf = f.read(chunk)
            end = scan(buf, size)
            if end:
                self.offset += end
                if end < len(buf):
                    f.seek(self.offset)  # the next run, or frame, starts there
                n += end // (FRAME.size + size)
                yield buf[:end]
                continue
            f.seek(self.offset)
            body = self._next(n)  # not a whole record frame: a listener table, the end, an error
            if body is None:
                return
            n += 1
            yield FRAME.pack(FRAME_RECORD, size) + body

    def _next(self, n: int) -> Optional[bytes]:
        """The next record after `n`, None after the end marker; listener tables on the way
        go to on_listeners."""
        f, size = self.f, self.header.record_size
        while True:
            at = self.offset
            head = f.read(FRAME.size)
            if not head:
                raise self._fail(at, f"truncated: ends after {n} records without the end "
                                     "marker (was the recorder killed?)")
            if len(head) < FRAME.size:
                raise self._fail(at, f"truncated inside record {n + 1}")
            kind, length = FRAME.unpack(head)
            body = f.read(length)
            self.offset = at + FRAME.size + len(body)
            if len(body) < length:
                raise self._fail(at, f"truncated inside record {n + 1}")
            if kind == FRAME_RECORD:
                if length != size:
                    raise self._fail(at, f"corrupt: record {n + 1} has {length} bytes, "
                                         f"expected {size}")
                return body
            elif kind == FRAME_LISTENERS:
                if self.on_listeners is not None:
                    self.on_listeners(*self._listeners(at, body))
            elif kind == FRAME_TRAILER:
                self.trailer = self._trailer(at, body)
                if f.read(1):
                    raise self._fail(self.offset, "corrupt: data after the end marker")
                return None
            else:
                raise self._fail(at, f"corrupt: unknown frame type {kind} after {n} records")

    def _listeners(self, at: int, body: bytes) -> tuple[int, list]:
        from .listeners import listener_from_dict
        try:
            doc = json.loads(body)
            return int(doc["ns"]), [listener_from_dict(d) for d in doc["listeners"]]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise self._fail(at, f"corrupt listener table ({exc})") from None

    def _trailer(self, at: int, body: bytes) -> Trailer:
        try:
            doc = json.loads(body)
            return Trailer(ended_ns=int(doc["ended_ns"]),
                           lost={str(k): int(v) for k, v in doc.get("lost", {}).items()})
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise self._fail(at, f"corrupt end marker ({exc})") from None


def open_reader(path: str) -> tuple[BinaryIO, Reader]:
    try:
        f = open(path, "rb")
    except OSError as exc:
        raise RecordingError(f"cannot open recording {path}: {exc.strerror}") from None
    try:
        return f, Reader(f, path)
    except BaseException:
        f.close()
        raise
