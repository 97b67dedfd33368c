"""What a run ends with, typed: RunSummary (live trace/export/record and replay alike) and the
one list of reasons a record or an open can be lost. The text summary (sinks/text.py) and
`--summary-json` (to_dict) both render a RunSummary; nothing parses either back."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Optional

from . import wire
from .model import OpenPath, Outcome


class LossReason(str, Enum):
    """Why a record or an open never became output. Values are the exported `reason` label
    values and the summary's names; the order is the exposition's."""
    # kernel side, TT_STAT_* order (bpf/tcptrace.h, mirrored as wire.STAT_NAMES)
    RINGBUF_FULL = "ringbuf_full"
    TABLE_FULL = "table_full"
    STALE_ENTRY = "stale_entry"
    UNKNOWN_TRANSITION = "unknown_transition"   # also the tracker's, for a record it cannot name
    MISSED_STATE_CHANGE = "missed_state_change"  # no program ran for it: repaired (TT_F_REPAIRED)
    # listener side: a SYN whose bracket overlapped another CPU's on the same listener (its
    # drop reason or cookie is the kernel's predicate read a moment apart: inferred, counted)
    LISTEN_DROP_INFERRED = "listen_drop_inferred"
    LISTENER_TABLE_FULL = "listener_table_full"  # a listening socket was not tracked
    LISTEN_PORT_FULL = "listen_port_full"        # a port's counters went to port "other"
    LISTEN_UNCLOSED = "listen_unclosed"          # a SYN at a listener left unclassified
    # kernel table entries the session's sweep dropped (loader.BpfPrograms.expire_half_open)
    HALF_OPEN_EXPIRED = "half_open_expired"
    # collector side (tracker.py)
    DECODE_ERROR = "decode_error"
    REQUEST_EVICTED = "request_evicted"


# what the kernel counts, in the stats map's index order; a reason missing here fails at import
KERNEL_STATS = tuple(LossReason(name) for name in wire.STAT_NAMES)
# what a live run's kernel side reports (and a recording's end marker keeps)
KERNEL_REASONS = (*KERNEL_STATS, LossReason.HALF_OPEN_EXPIRED)


def add_lost(*counts: dict) -> dict[str, int]:
    """Loss counters by reason (plain strings), added up: the kernel side and the collector
    side share some reasons."""
    total: dict[str, int] = {}
    for c in counts:
        for reason, n in c.items():
            total[reason] = total.get(reason, 0) + n
    return total


@dataclass
class RunSummary:
    backend: Optional[str]                 # the backend that ran (replay: the recording's)
    # backend -> "loaded" or why it was refused, in the order tried; {} for replay
    backends_tried: dict[str, str] = field(default_factory=dict)
    # (path, outcome) -> opens that passed the filters; only those seen. Live: counted in the
    # kernel (plus the request timeouts the tracker makes), exact whatever was lost on the
    # way; replay: what the tracker made of the records
    counts: dict[tuple[OpenPath, Outcome], int] = field(default_factory=dict)
    # open lines (or, for record, opens classified) the collector itself produced: below the
    # counts when records were lost on the way (lost says why); None: not known
    opens_shown: Optional[int] = None
    records_read: Optional[int] = None     # live: records that crossed the ring buffer
    # reason -> records or opens lost, kernel and collector added up: every kernel reason,
    # and the collector's that happened (what the text summary lists)
    lost: dict[str, int] = field(default_factory=dict)
    kernel_lost: dict[str, int] = field(default_factory=dict)
    pending_requests: int = 0              # request sockets still re-sending SYN-ACKs
    tracked_at_exit: Optional[int] = None  # kernel table entries left (live only)
    records_written: Optional[int] = None  # record only
    # replay only: records read and the kernel they were recorded on (the text header says)
    replayed_records: Optional[int] = None
    recorded_kernel: Optional[str] = None

    @property
    def opens_total(self) -> int:
        return sum(self.counts.values())

    @property
    def opens_not_shown(self) -> int:
        return 0 if self.opens_shown is None else max(self.opens_total - self.opens_shown, 0)

    @property
    def lost_total(self) -> int:
        return sum(self.lost.values())

    def to_dict(self) -> dict:
        """The `--summary-json` document (README): every path x outcome and every reason,
        zeros included."""
        opens = {p.value: {o.value: self.counts.get((p, o), 0) for o in Outcome} for p in OpenPath}
        lost = {r.value: 0 for r in LossReason}
        lost.update(self.lost)
        kernel = {r.value: 0 for r in KERNEL_REASONS}
        kernel.update(self.kernel_lost)
        return {"backend": self.backend, "backends_tried": dict(self.backends_tried),
                "opens": opens, "opens_total": self.opens_total,
                "opens_shown": self.opens_shown, "opens_not_shown": self.opens_not_shown,
                "records_read": self.records_read,
                "lost": lost, "lost_total": self.lost_total, "kernel_lost": kernel,
                "pending_requests": self.pending_requests,
                "tracked_at_exit": self.tracked_at_exit,
                "records_written": self.records_written}
