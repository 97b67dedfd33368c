"""Histogram buckets for handshake durations, from the running kernel's SYN schedule.

A handshake that needed k re-sent SYNs (or SYN-ACKs) takes just over the k-th re-send time, so
bucket boundaries sit just after each re-send: a histogram then tells "established after one
lost SYN" from "after two" instead of smearing them across a generic exponential ladder.
"""

from __future__ import annotations

from pathlib import Path

SYSCTL = Path("/proc/sys/net/ipv4")
TIMEOUT_INIT_S = 1.0   # TCP_TIMEOUT_INIT
RTO_MAX_S = 120.0      # TCP_RTO_MAX
AFTER_S = 0.25         # how far past a re-send time a boundary sits
# loopback to WAN round trips: 10 us .. 0.5 s
SUB_SECOND = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05,
              0.1, 0.25, 0.5)


def syn_resend_times(retries: int, linear: int) -> list[float]:
    """Seconds after the first SYN at which SYNs are re-sent: RTO 1 s, kept for the first
    `linear` re-sends (tcp_syn_linear_timeouts), then doubling; the kernel gives up once the
    time it models for `retries` re-sends has passed, at the next timer run."""
    rto, t, times = TIMEOUT_INIT_S, 0.0, []
    budget = 0.0
    r = TIMEOUT_INIT_S
    for i in range(retries + 1):  # the time the kernel allows for `retries` re-sends
        budget += r
        if i >= linear:
            r = min(r * 2, RTO_MAX_S)
    while t < budget:
        t += rto
        times.append(t)
        if len(times) > linear:
            rto = min(rto * 2, RTO_MAX_S)
    times.append(t + rto)  # no later than this, the kernel has given up
    return times


def synack_resend_times(retries: int) -> list[float]:
    """A request socket re-sends its SYN-ACK at 1, 3, 7, ... s; dropped after `retries`."""
    t, rto, times = 0.0, TIMEOUT_INIT_S, []
    for _ in range(retries + 1):
        t += rto
        times.append(t)
        rto = min(rto * 2, RTO_MAX_S)
    return times


def handshake_buckets(syn_retries: int, synack_retries: int, linear: int) -> list[float]:
    resends = set(syn_resend_times(syn_retries, linear)) | set(synack_resend_times(synack_retries))
    return sorted(set(SUB_SECOND) | {round(t + AFTER_S, 3) for t in resends})


def read_sysctl(name: str, default: int) -> int:
    try:
        return int((SYSCTL / name).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return default  # older kernels lack tcp_syn_linear_timeouts


def buckets_from_sysctls() -> list[float]:
    return handshake_buckets(read_sysctl("tcp_syn_retries", 6), read_sysctl("tcp_synack_retries", 5),
                             read_sysctl("tcp_syn_linear_timeouts", 0))
