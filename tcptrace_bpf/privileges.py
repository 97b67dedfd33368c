"""Which capabilities tracing needs, and which of them this process lacks.

Measured on kernel 6.18 (tests/kernel/test_hard_edges.py runs the tracer under setpriv with
exactly this set): as uid 0, CAP_BPF (load programs, create maps) and CAP_PERFMON (attach to
tracepoints, read kernel memory) suffice. Kernels older than 5.8 have neither and need
CAP_SYS_ADMIN. Optional: CAP_SYS_PTRACE lets the start-up /proc walk attribute listeners of
other users (procfs.py); without it their passive opens show no process until they listen()
again."""

from __future__ import annotations

CAPS = {"CAP_SYS_PTRACE": 19, "CAP_SYS_ADMIN": 21, "CAP_PERFMON": 38, "CAP_BPF": 39}


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


def has(cap: str) -> bool:
    return bool(effective() >> CAPS[cap] & 1)


def missing() -> str:
    """'' when every required capability is effective, else one line saying what to do."""
    need = required()
    lack = [c for c in need if not has(c)]
    if not lack or has("CAP_SYS_ADMIN"):
        return ""
    return (f"missing {', '.join(lack)}: run as root, or grant {' + '.join(need)} "
            "(README: Privileges)")
