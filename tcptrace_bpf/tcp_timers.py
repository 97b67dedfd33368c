"""The kernel's handshake timers (include/net/tcp.h), the one place Python models them: when
SYNs and SYN-ACKs are re-sent and when the kernel gives up. The tracker uses them to expire
requests whose end no hook sees, the histogram buckets to place their bounds."""

from __future__ import annotations

TIMEOUT_INIT_S = 1.0   # TCP_TIMEOUT_INIT: the first handshake RTO
RTO_MAX_S = 120.0      # TCP_RTO_MAX: the RTO stops doubling here
# sysctl defaults (TCP_SYN_RETRIES, TCP_SYNACK_RETRIES), for when a sysctl cannot be read;
# older kernels lack tcp_syn_linear_timeouts, which is the same as 0: no linear re-sends
SYN_RETRIES = 6
SYNACK_RETRIES = 5
SYN_LINEAR_TIMEOUTS = 0


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
    """A request socket re-sends its SYN-ACK at 1, 3, 7, ... s; dropped after `retries`
    (the last time listed: the timer run that finds the budget spent)."""
    t, rto, times = 0.0, TIMEOUT_INIT_S, []
    for _ in range(retries + 1):
        t += rto
        times.append(t)
        rto = min(rto * 2, RTO_MAX_S)
    return times
