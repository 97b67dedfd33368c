"""Which capabilities tracing needs, and which of them this process lacks.

Measured on kernel 6.18 (tests/kernel/test_hard_edges.py runs the tracer under setpriv with
exactly this set): as uid 0, CAP_BPF (load programs, create maps) and CAP_PERFMON (attach to
tracepoints, read kernel memory) suffice. Kernels older than 5.8 have neither and need
CAP_SYS_ADMIN. Optional: CAP_SYS_PTRACE lets the start-up /proc walk attribute listeners of
other users (procfs.py); without it their passive opens show no process until they listen()
again. A user other than root also needs CAP_DAC_READ_SEARCH (measured by
tests/kernel/test_systemd_unit.py): bcc reads each tracepoint's format and id under tracefs,
whose directories are root's, mode 0700."""

from __future__ import annotations

CAPS = {"CAP_DAC_OVERRIDE": 1, "CAP_DAC_READ_SEARCH": 2, "CAP_SYS_PTRACE": 19, "CAP_SYS_ADMIN": 21, "CAP_PERFMON": 38, "CAP_BPF": 39}


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


TRACEPOINT_FORMAT = ("/sys/kernel/debug/tracing/events/sock/inet_sock_set_state/format",
                     "/sys/kernel/tracing/events/sock/inet_sock_set_state/format")


def tracefs_denied() -> bool:
    """True when tracefs is there but this process may not read it (not mounted is another
    problem, which `check` names)."""
    for path in TRACEPOINT_FORMAT:
        try:
            with open(path, "rb"):
                return False
        except PermissionError:
            return True
        except OSError:
            continue
    return False


def missing() -> str:
    """'' when every required capability is effective, else one line saying what to do."""
    need = required()
    lack = [c for c in need if not has(c)]
    if lack and not has("CAP_SYS_ADMIN"):
        return (f"missing {', '.join(lack)}: run as root, or grant {' + '.join(need)} "
                "(README: Privileges)")
    if tracefs_denied():
        return ("cannot read tracefs (root's, mode 0700): run as root, or grant "
                "CAP_DAC_READ_SEARCH too (README: Privileges)")
    return ""
