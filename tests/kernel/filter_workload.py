"""One side of the filter test's workload (tests/kernel/test_filters.py), run in a network
namespace of its own:

    ip netns exec NS python3 tests/kernel/filter_workload.py PORT

Prints its pid and waits for a line on stdin (the test moves it into a cgroup and starts the
tracers meanwhile), then drives a mix of real handshakes: IPv4 and IPv6 connections that
establish, connections refused, and one whose first SYN is dropped (nft), so that it is
re-sent about a second later (slow). PORT: the IPv4 listener's port. Prints the ports it used as JSON, then exits. Which
filter keeps what is never decided here: the test compares two tracers' views."""

from __future__ import annotations

import errno
import json
import os
import select
import socket
import subprocess
import sys
import time

LO = {4: (socket.AF_INET, "127.0.0.1"), 6: (socket.AF_INET6, "::1")}


def sh(*cmd: str, stdin: str | None = None) -> None:
    subprocess.run(cmd, input=stdin, check=True, capture_output=True, text=True)


def established(fam: int, count: int, port: int = 0) -> int:
    af, lo = LO[fam]
    srv = socket.socket(af)
    srv.bind((lo, port))
    srv.listen(64)
    for _ in range(count):
        c = socket.create_connection(srv.getsockname()[:2])
        a, _ = srv.accept()
        c.close(), a.close()
    port = srv.getsockname()[1]
    srv.close()
    return port


def refused(fam: int, count: int) -> int:
    af, lo = LO[fam]
    probe = socket.socket(af)
    probe.bind((lo, 0))
    port = probe.getsockname()[1]
    probe.close()
    for _ in range(count):
        c = socket.socket(af)
        assert c.connect_ex((lo, port)) == errno.ECONNREFUSED
        c.close()
    return port


def syn_resent() -> int:
    """The first SYN dropped on input, so the connection is established by the re-sent one
    (about 1 s later): syn_retransmits 1 and a duration of about a second."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    port = srv.getsockname()[1]
    sh("nft", "-f", "-", stdin=f"""table inet ft {{ chain in {{ type filter hook input priority 0;
  tcp dport {port} tcp flags & (syn|ack) == syn drop
  }}
}}""")
    c = socket.socket()
    c.setblocking(False)
    assert c.connect_ex(("127.0.0.1", port)) == errno.EINPROGRESS
    time.sleep(0.3)  # the first SYN is gone; the re-sent one (after 1 s) gets through
    sh("nft", "delete", "table", "inet", "ft")
    select.select([], [c], [], 10)
    assert c.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
    a, _ = srv.accept()
    c.close(), a.close(), srv.close()
    return port


def main() -> None:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    print(json.dumps({"pid": os.getpid()}), flush=True)
    sys.stdin.readline()
    ports = {"v4": established(4, 3, int(sys.argv[1])), "v6": established(6, 2), "refused4": refused(4, 2),
             "refused6": refused(6, 1), "slow": syn_resent()}
    print(json.dumps(ports), flush=True)


if __name__ == "__main__":
    main()
