"""Sinks: consume what a run produces, never produce it. One protocol for all of them: the
text and JSON-lines printers, the Prometheus metrics and the recording writer. A session (live
or replayed) calls start() once tracing runs, emit() per item, flush() once per poll or
batch, close() with the run's summary."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Callable, Optional, Protocol, TextIO

from ..summary import RunSummary


@dataclass(frozen=True)
class RunStart:
    """What a run tells its sinks when it starts: read at scrape or close time, never copied."""
    backend: str
    epoch_offset: float                       # epoch seconds = monotonic seconds + this
    lost: Callable[[], dict[str, int]]        # losses so far, by reason (kernel + collector)
    tracked: Callable[[], int]                # handshakes in flight in the kernel table
    # export mode: the kernel's own open counters (loader.BpfPrograms.aggregates), else None
    aggregates: Optional[Callable[[], dict[str, list[int]]]] = None
    # the listener side (loader.BpfPrograms.listen_ports / .listeners), None when it is off
    listen_ports: Optional[Callable[[], dict]] = None
    listeners: Optional[Callable[[], list]] = None


class Sink(Protocol):
    def start(self, run: RunStart) -> None: ...

    def emit(self, item) -> None: ...

    def flush(self) -> None: ...

    def close(self, summary: RunSummary) -> None: ...


class Lines:
    """One rendered line per item into a text stream's buffer; flush() sends them (once per
    poll, so a busy run writes in batches)."""

    def __init__(self, render: Callable[[object], str], out: Optional[TextIO] = None):
        self.out = out or sys.stdout
        write = self.out.write
        # an instance attribute, not a method: the hot path of `trace` is one call per open
        self.emit = lambda item: write(render(item) + "\n")

    def start(self, run: RunStart) -> None:
        pass

    def emit(self, item) -> None:  # replaced per instance in __init__
        raise NotImplementedError

    def flush(self) -> None:
        self.out.flush()

    def close(self, summary: RunSummary) -> None:
        self.out.flush()


class Discard:
    """Takes everything, keeps nothing: `record` classifies opens (for its summary) but
    prints none."""

    def start(self, run: RunStart) -> None:
        pass

    def emit(self, item) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self, summary: RunSummary) -> None:
        pass
