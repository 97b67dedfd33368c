"""Which capabilities tracing needs, and which of them this process lacks.

Measured on kernel 6.18 (tests/kernel/test_operability.py runs the tracer under setpriv with
exactly this set): as uid 0, CAP_BPF (load programs, create maps) and CAP_PERFMON (attach to
tracepoints, read kernel memory) suffice. Kernels older than 5.8 have neither and need
CAP_SYS_ADMIN. Optional: CAP_SYS_PTRACE lets the start-up /proc walk attribute listeners of
other users (procfs.py); without it their passive opens show no process until they listen()
again. A user other than root also needs CAP_DAC_READ_SEARCH (measured by
tests/kernel/test_systemd_unit.py): bcc reads each tracepoint's format and id under tracefs,
whose directories are root's, mode 0700."""

from __future__ import annotations

import errno

CAPS = {"CAP_DAC_OVERRIDE": 1, "CAP_DAC_READ_SEARCH": 2, "CAP_SYS_PTRACE": 19,
        "CAP_SYS_ADMIN": 21, "CAP_PERFMON": 38, "CAP_BPF": 39}


def required() -> tuple[str, ...]:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            last = int(f.read())
    except (OSError, ValueError):
        last = CAPS["CAP_BPF"]
    return ("CAP_BPF", "CAP_PERFMON") if last >= CAPS["CAP_BPF"] else ("CAP_SYS_ADMIN",)


def effective() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def mask(caps) -> int:
    """The capability set (as /proc/PID/status prints it, in hex) holding exactly `caps`."""
    return sum(1 << CAPS[c] for c in caps)


def has(cap: str) -> bool:
    return bool(effective() >> CAPS[cap] & 1)


TRACEPOINT_FORMAT = ("/sys/kernel/debug/tracing/events/sock/inet_sock_set_state/format",
                     "/sys/kernel/tracing/events/sock/inet_sock_set_state/format")
TRACEFS_DENIED = ("cannot read tracefs (root's, mode 0700): run as root, or grant "
                  "CAP_DAC_READ_SEARCH too (README: Privileges)")


def tracefs_denied() -> bool:
    """True when tracefs is there but this user may not read it (EACCES at every place bcc
    looks); not mounted, or refused for another reason, is not this problem."""
    denied = False
    for path in TRACEPOINT_FORMAT:
        try:
            with open(path, "rb"):
                return False
        except OSError as exc:
            denied = denied or exc.errno == errno.EACCES
    return denied


def missing() -> str:
    """'' when every required capability is effective, else one line saying what to do."""
    need = required()
    lack = [c for c in need if not has(c)]
    if not lack or has("CAP_SYS_ADMIN"):
        return ""
    return (f"missing {', '.join(lack)}: run as root, or grant {' + '.join(need)} "
            "(README: Privileges)")


def cannot_trace() -> str:
    """'' when this process may load, attach and read tracefs, else why not, in one line."""
    return missing() or (TRACEFS_DENIED if tracefs_denied() else "")
