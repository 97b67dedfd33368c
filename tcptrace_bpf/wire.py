"""Python mirror of bpf/tcptrace.h: the ring-buffer record layout, and decode(); and the
layouts of the map entries the collector reads (MAP_LAYOUTS).

This is the only Python module that knows the byte layouts. tests/test_header_mirror.py checks
every constant and the field order here against the header's text, and tests/kernel/test_backends.py
the layouts against the structs bcc compiled from it.
"""

from __future__ import annotations

import re
import socket
import struct
from dataclasses import dataclass

from .model import OPEN_FLAGS, OpenPath, Outcome

WIRE_VERSION = 3
MAX_STATES = 8
COMM_LEN = 16
AF_INET, AF_INET6 = 2, 10

KIND_OPEN, KIND_REQ_SYNACK_RTX, KIND_EVENT = 1, 2, 3
PROBE_STATE, PROBE_RST_IN, PROBE_SYN_IN, PROBE_SYNACK_OUT, PROBE_DESTROY = 1, 2, 3, 4, 5
F_RST_IN, F_SYN_IN, F_SYNACK_OUT, F_NO_START, F_DESTROYED = 0x01, 0x02, 0x04, 0x08, 0x10
F_REPAIRED = 0x20
OF_FASTOPEN, OF_SYNCOOKIE = 0x01, 0x02  # open_flags (TT_OF_*)
NOPENFLAGS = 2
OPEN_FLAG_NAMES = OPEN_FLAGS  # bit i, and agg_flagged's index within a path
STAT_NAMES = ("ringbuf_full", "table_full", "stale_entry", "unknown_transition",  # TT_STAT_*
              "missed_state_change", "listen_drop_inferred", "listener_table_full",
              "listen_port_full", "listen_unclosed")
# Listener side (struct tcptrace_listen_counts): drops[TT_DROP_*] reasons, in index order
DROP_ACCEPT_QUEUE, DROP_SYN_QUEUE, DROP_OTHER, NDROPS = 0, 1, 2, 3
DROP_REASONS = ("accept_queue_full", "syn_queue_full", "other")

# Export mode's kernel counters (bpf/tcptrace.bpf.c, "export mode"): the index orders of
# TT_PATH_* and TT_OUT_* are the member orders of model's OpenPath and Outcome; family index 0
# is IPv4 (TT_NFAMILIES).
AGG_PATHS = tuple(p.value for p in OpenPath)
AGG_OUTCOMES = tuple(o.value for o in Outcome)
AGG_FAMILIES = (4, 6)


def handshake_index(path: int, outcome: int, family: int) -> int:
    return (path * len(AGG_OUTCOMES) + outcome) * len(AGG_FAMILIES) + family


def duration_index(path: int, family: int, nbuckets: int) -> int:
    """First slot of one histogram: nbuckets bucket counts, one above the last, the sum (ns)."""
    return (path * len(AGG_FAMILIES) + family) * (nbuckets + 2)

# struct tcptrace_record, field for field (little-endian, no implicit padding)
_FORMAT = f"<QQQQ16s16sIIIHHHBBBBBBB{MAX_STATES}sBB5x{COMM_LEN}s"
RECORD = struct.Struct(_FORMAT)
RECORD_SIZE = RECORD.size  # 120
FIELDS = ("ts_ns", "start_ns", "skaddr", "cgroup_id", "saddr", "daddr", "netns", "pid",
          "passive_us", "sport", "dport", "family", "kind", "probe", "nstates", "flags",
          "sk_err", "syn_retrans", "synack_retrans", "states", "synack_budget", "open_flags",
          "comm")

# Older layouts still read (recordings outlive versions): version -> (struct, fields).
_LAYOUTS = {
    1: (struct.Struct("<QQQ16s16sIIIHHHBBBBBBB8sB6x16s"),
        tuple(f for f in FIELDS if f not in ("cgroup_id", "open_flags"))),
    2: (struct.Struct("<QQQQ16s16sIIIHHHBBBBBBB8sB6x16s"),
        tuple(f for f in FIELDS if f != "open_flags")),
    WIRE_VERSION: (RECORD, FIELDS),
}
SUPPORTED_VERSIONS = tuple(sorted(_LAYOUTS))


def record_size(version: int) -> int:
    if version not in _LAYOUTS:
        raise DecodeError(f"wire format version {version} is not one this tcptrace-bpf reads "
                          f"(it reads {', '.join(map(str, SUPPORTED_VERSIONS))})")
    return _LAYOUTS[version][0].size


class DecodeError(ValueError):
    """A ring-buffer record that does not match the wire format."""


@dataclass(slots=True)
class WireRecord:
    """One decoded ring-buffer record; fields as in struct tcptrace_record. Treat as
    immutable (not frozen only because frozen dataclasses are slow to build, and decode runs
    once per connection)."""
    kind: int
    ts_ns: int
    start_ns: int
    skaddr: int
    cgroup_id: int
    family: int
    saddr: str
    sport: int
    daddr: str
    dport: int
    netns: int
    pid: int
    comm: str
    states: tuple[int, ...]
    flags: int
    sk_err: int
    syn_retrans: int
    synack_retrans: int
    synack_budget: int
    passive_us: int
    probe: int
    open_flags: int = 0


_ADDR_CACHE: dict[bytes, str] = {}  # hosts talk to few addresses; formatting one is slow
_ADDR_CACHE_MAX = 65536


def _addr(raw: bytes, v4: bool) -> str:
    key = raw[:4] if v4 else raw  # 4 bytes or 16: the two families cannot collide
    text = _ADDR_CACHE.get(key)
    if text is None:
        # inet_ntop, not ipaddress: v4-mapped addresses read ::ffff:127.0.0.1, as ss and the
        # kernel print them (ipaddress before 3.13 prints ::ffff:7f00:1)
        text = socket.inet_ntop(socket.AF_INET if v4 else socket.AF_INET6, key)
        if len(_ADDR_CACHE) >= _ADDR_CACHE_MAX:
            _ADDR_CACHE.clear()
        _ADDR_CACHE[key] = text
    return text


_KINDS = (KIND_OPEN, KIND_REQ_SYNACK_RTX, KIND_EVENT)


def decode(buf: bytes, version: int = WIRE_VERSION) -> WireRecord:
    if version == WIRE_VERSION:
        layout = RECORD
        if len(buf) < RECORD_SIZE:
            raise DecodeError(f"record of {len(buf)} bytes, expected {RECORD_SIZE}")
        (ts_ns, start_ns, skaddr, cgroup_id, saddr, daddr, netns, pid, passive_us, sport,
         dport, family, kind, probe, nstates, flags, sk_err, syn_retrans, synack_retrans,
         states, synack_budget, open_flags, comm) = layout.unpack_from(buf)
    else:
        record_size(version)  # raises for a version this build does not read
        layout, fields = _LAYOUTS[version]
        if len(buf) < layout.size:
            raise DecodeError(f"record of {len(buf)} bytes, expected {layout.size}")
        v = dict(zip(fields, layout.unpack_from(buf)))
        v.setdefault("cgroup_id", 0)
        v.setdefault("open_flags", 0)
        (ts_ns, start_ns, skaddr, cgroup_id, saddr, daddr, netns, pid, passive_us, sport,
         dport, family, kind, probe, nstates, flags, sk_err, syn_retrans, synack_retrans,
         states, synack_budget, open_flags, comm) = (v[f] for f in FIELDS)
    if kind not in _KINDS:
        raise DecodeError(f"unknown record kind {kind}")
    if family != AF_INET and family != AF_INET6:
        raise DecodeError(f"unknown address family {family}")
    if nstates > MAX_STATES:
        raise DecodeError(f"{nstates} states, at most {MAX_STATES}")
    v4 = family == AF_INET
    return WireRecord(
        kind, ts_ns, start_ns, skaddr, cgroup_id, 4 if v4 else 6,
        _addr(saddr, v4), sport, _addr(daddr, v4), dport, netns, pid,
        comm.split(b"\0", 1)[0].decode(errors="replace"),
        tuple(states[:nstates]), flags, sk_err, syn_retrans, synack_retrans, synack_budget,
        passive_us, probe, open_flags)


PROBE_NAMES = {PROBE_STATE: "state", PROBE_RST_IN: "rst_in", PROBE_SYN_IN: "syn_in",
               PROBE_SYNACK_OUT: "synack_out", PROBE_DESTROY: "destroy"}


_FLAG_NAMES = tuple(tuple(n for i, n in enumerate(OPEN_FLAGS) if bits >> i & 1)
                    for bits in range(1 << len(OPEN_FLAGS)))


def open_flag_names(bits: int) -> tuple[str, ...]:
    return _FLAG_NAMES[bits & ((1 << len(OPEN_FLAGS)) - 1)]


# Map entries (bpf/tcptrace.h), as the collector reads them by map fd (loader.BpfPrograms):
# struct tcptrace_listen_counts: drops[TT_NDROPS], syncookies_sent, synack_retransmits,
# passive_opens (listen_ports' values; the head of struct tcptrace_listener)
LISTEN_COUNTS = struct.Struct(f"<{NDROPS}QQQQ")
# struct tcptrace_listener (listen_socks' values; key: the socket's address, a u64)
LISTENER = struct.Struct(f"<{LISTEN_COUNTS.size}sQ16sIIIIIIHHBB2x{COMM_LEN}s")
LISTENER_FIELDS = ("c", "cgroup_id", "addr", "netns", "pid", "accept_queue", "accept_queue_max",
                   "syn_queue", "inflight", "port", "family", "closed", "snapshot_ok", "comm")
# struct tcptrace_listener_key and struct tcptrace_owner (the listeners map)
LISTENER_KEY = struct.Struct("<IH2x")
LISTENER_KEY_FIELDS = ("netns", "port")
OWNER = struct.Struct(f"<QI{COMM_LEN}s4x")
OWNER_FIELDS = ("cgroup_id", "pid", "comm")
# struct name -> (layout, field names): what tests/kernel/test_backends.py compares with bcc
MAP_LAYOUTS = {
    "tcptrace_record": (RECORD, FIELDS),
    "tcptrace_listen_counts": (LISTEN_COUNTS, ("drops", "syncookies_sent", "synack_retransmits",
                                               "passive_opens")),
    "tcptrace_listener": (LISTENER, LISTENER_FIELDS),
    "tcptrace_listener_key": (LISTENER_KEY, LISTENER_KEY_FIELDS),
    "tcptrace_owner": (OWNER, OWNER_FIELDS),
}


def field_offsets(layout: str = "tcptrace_record") -> dict[str, int]:
    """Byte offset of every named field of one of MAP_LAYOUTS, from its format itself
    (checked against bcc's view). An array is one field: drops[3] is "3Q"."""
    fmt, fields = MAP_LAYOUTS[layout]
    out, offset = {}, 0
    names = iter(fields)
    for token in re.findall(r"\d*[a-zA-Z]", fmt.format[1:]):
        if not token.endswith("x"):  # padding has no name
            out[next(names)] = offset
        offset += struct.calcsize("<" + token)
    return out
