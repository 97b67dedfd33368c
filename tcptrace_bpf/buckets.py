"""Histogram buckets for handshake durations, from the running kernel's SYN schedule
(tcp_timers, with this kernel's sysctls).

A handshake that needed k re-sent SYNs (or SYN-ACKs) takes just over the k-th re-send time, so
bucket boundaries sit just after each re-send: a histogram then tells "established after one
lost SYN" from "after two" instead of smearing them across a generic exponential ladder.
"""

from __future__ import annotations

from pathlib import Path

from . import tcp_timers
from .tcp_timers import syn_resend_times, synack_resend_times

SYSCTL = Path("/proc/sys/net/ipv4")
AFTER_S = 0.25         # how far past a re-send time a boundary sits
# loopback to WAN round trips: 10 us .. 0.5 s
SUB_SECOND = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05,
              0.1, 0.25, 0.5)


def handshake_buckets(syn_retries: int, synack_retries: int, linear: int) -> list[float]:
    resends = set(syn_resend_times(syn_retries, linear)) | set(synack_resend_times(synack_retries))
    return sorted(set(SUB_SECOND) | {round(t + AFTER_S, 3) for t in resends})


def read_sysctl(name: str, default: int) -> int:
    try:
        return int((SYSCTL / name).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return default  # older kernels lack tcp_syn_linear_timeouts


def buckets_from_sysctls() -> list[float]:
    return handshake_buckets(
        read_sysctl("tcp_syn_retries", tcp_timers.SYN_RETRIES),
        read_sysctl("tcp_synack_retries", tcp_timers.SYNACK_RETRIES),
        read_sysctl("tcp_syn_linear_timeouts", tcp_timers.SYN_LINEAR_TIMEOUTS))
