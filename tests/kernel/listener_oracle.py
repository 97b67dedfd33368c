"""The kernel's own listener figures, read in the current network namespace: the TcpExt MIB
(/proc/net/netstat) and each listener's row from ss. Tests compare a tracer's per-listener
figures with these by exact equality (scenarios.py's listener scenarios).

What moves where (kernel 6.18, docs/design/listener-side.md):
- SYN dropped at a listener: ListenDrops +1 and the listener's sk_drops +1, with
  ListenOverflows (accept queue full) or TCPReqQFullDrop (SYN queue full, no cookies).
  No kfree_skb event: the SYN is freed by consume_skb.
- final ACK meeting a full accept queue: ListenOverflows +1, ListenDrops +1, but sk_drops +2
  (tcp_listendrop, then discard_and_relse's sk_drops_skbadd); one kfree_skb, reason
  TCP_LISTEN_OVERFLOW, rx_sk the listener; with tcp_abort_on_overflow=1 also EmbryonicRsts +1.
Measured with perf on skb:kfree_skb (scenarios acceptq_syn, acceptq_ack, acceptq_ack_abort).
"""

from __future__ import annotations

import re
import subprocess


def mib() -> dict[str, int]:
    """Every TcpExt counter of this namespace."""
    with open("/proc/net/netstat") as f:
        lines = [line.split() for line in f]
    # pairs of lines: names, then values, each starting with "TcpExt:", "IpExt:", ...
    for names, values in zip(lines[::2], lines[1::2]):
        if names[0] == "TcpExt:":
            return dict(zip(names[1:], map(int, values[1:])))
    raise RuntimeError("no TcpExt in /proc/net/netstat")


def mib_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}


def ss_listeners() -> list[dict]:
    """Each listening TCP socket of this namespace: `ss -ltnmH` prints two lines per socket,
    the queues and addresses, then skmem. For a listener Recv-Q is the accept queue's length
    and Send-Q its limit (the backlog); skmem's `d` is sk_drops. `-4`/`-6` give the family:
    a dual-stack listener on :: is AF_INET6 and shows as `*` (reported as `::`)."""
    rows = []
    for fam in (4, 6):
        out = subprocess.run(["ss", "-ltnmH", f"-{fam}"], capture_output=True, text=True,
                             check=True).stdout.splitlines()
        for head, mem in zip(out[::2], out[1::2]):
            _, recvq, sendq, local, _ = head.split()
            addr, port = local.rsplit(":", 1)
            rows.append({"family": fam, "addr": "::" if addr == "*" else addr.strip("[]"),
                         "port": int(port), "dual_stack": addr == "*",
                         "accept_queue": int(recvq), "accept_queue_max": int(sendq),
                         "sk_drops": int(re.search(r"[(,]d(\d+)", mem).group(1))})
    return rows
