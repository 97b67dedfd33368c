"""The vocabulary: TCP states, open paths, outcomes, and the OpenAttempt the tracker emits."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, IntEnum
from typing import Optional


class TcpState(IntEnum):
    """include/net/tcp_states.h"""
    ESTABLISHED = 1
    SYN_SENT = 2
    SYN_RECV = 3
    FIN_WAIT1 = 4
    FIN_WAIT2 = 5
    TIME_WAIT = 6
    CLOSE = 7
    CLOSE_WAIT = 8
    LAST_ACK = 9
    LISTEN = 10
    CLOSING = 11
    NEW_SYN_RECV = 12

    @classmethod
    def name_of(cls, value: int) -> str:
        try:
            return cls(value).name
        except ValueError:
            return f"STATE_{value}"


# OpenPath and Outcome are also the kernel's export-mode index orders: member i is
# TT_PATH_*/TT_OUT_* == i in bpf/tcptrace.h (wire.AGG_* derive from them; tests/test_header_mirror.py
# holds the two together), so add or move a member on both sides.
class OpenPath(str, Enum):
    ACTIVE = "active"              # CLOSE > SYN_SENT > ESTABLISHED
    PASSIVE = "passive"            # listener child: SYN_RECV > ESTABLISHED
    SIMULTANEOUS = "simultaneous"  # SYN_SENT > SYN_RECV (crossed SYNs) > ESTABLISHED
    SELF = "self"                  # simultaneous open of a socket with its own address


class Outcome(str, Enum):
    ESTABLISHED = "established"
    REFUSED = "refused"          # RST answered our SYN
    RESET = "reset"              # RST later in the handshake
    TIMEOUT = "timeout"          # SYN / SYN-ACK retries exhausted
    UNREACHABLE = "unreachable"  # ICMP error ended the handshake
    ABORTED = "aborted"          # the application gave up (close, shutdown, disconnect)
    PORT_EXHAUSTED = "port_exhausted"  # connect() found no free local port (EADDRNOTAVAIL)


# Flags of an open (JSON "flags", metric label flag), in the kernel's open_flags bit order
# (wire.OPEN_FLAG_NAMES is the same tuple: bit i is OPEN_FLAGS[i]).
FASTOPEN, SYNCOOKIE = "fastopen", "syncookie"
OPEN_FLAGS = (FASTOPEN, SYNCOOKIE)


@dataclass(slots=True)
class OpenAttempt:
    """One resolved connection-open attempt, as every sink sees it. Sinks must not modify
    it (not frozen: frozen dataclasses cost microseconds to build, once per connection)."""
    ts: float                # epoch seconds when it resolved
    path: OpenPath
    outcome: Outcome
    family: int              # 4 or 6
    saddr: str
    sport: int
    daddr: str
    dport: int
    states: tuple[str, ...]
    duration_s: Optional[float]
    syn_retransmits: int
    synack_retransmits: int
    pid: Optional[int]       # connect() caller; passive: the listener's owner
    comm: Optional[str]
    netns: int
    errno: int = 0           # sk_err when it resolved, 0 if none (port_exhausted: 99)
    cgroup: Optional[int] = None  # cgroup v2 id of that process
    flags: tuple[str, ...] = ()   # what the handshake carried: OPEN_FLAGS names

    def to_dict(self) -> dict:
        return {
            "type": "open", "ts": round(self.ts, 6), "path": self.path.value, "outcome": self.outcome.value,
            "family": self.family, "saddr": self.saddr, "sport": self.sport,
            "daddr": self.daddr, "dport": self.dport, "states": list(self.states),
            "duration_s": None if self.duration_s is None else round(self.duration_s, 9),
            "syn_retransmits": self.syn_retransmits,
            "synack_retransmits": self.synack_retransmits,
            "pid": self.pid, "comm": self.comm, "netns": self.netns, "errno": self.errno,
            "cgroup": self.cgroup, "flags": list(self.flags),
        }


@dataclass(frozen=True)
class ProbeEvent:
    """One raw probe hit (trace --events): what the kernel saw, unexplained."""
    ts: float
    probe: str
    skaddr: int
    family: int
    saddr: str
    sport: int
    daddr: str
    dport: int
    old_state: Optional[str]
    new_state: Optional[str]
    netns: int = 0

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d["ts"] = round(self.ts, 6)
        d["event"] = d.pop("probe")
        d["skaddr"] = f"{self.skaddr:#x}"
        return d
