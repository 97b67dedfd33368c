"""Real handshakes, one per scenario, each meant to run in a fresh network namespace:

    unshare -n python3 tests/kernel/scenarios.py NAME

Prints one JSON object: the namespace inode, this pid, and what each socket's open must be
reported as. The expectations come from the sockets themselves (errno, getsockname, nft
counters), never from the tracer. Methods: ../shared/kernel-notes (crossed SYNs, timeouts).
"""

from __future__ import annotations

import errno
import json
import os
import resource
import select
import socket
import subprocess
import sys
import time

LO4, LO6 = "127.0.0.1", "::1"
REFUSED_MANY = 10  # refused_many's opens: tests count them exactly


def sh(*cmd: str, stdin: str | None = None) -> str:
    out = subprocess.run(cmd, input=stdin, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed: {out.stderr.strip()}")
    return out.stdout


def netns_setup(**sysctls: int) -> None:
    sh("ip", "link", "set", "lo", "up")
    for key, value in sysctls.items():
        with open(f"/proc/sys/net/ipv4/{key}", "w") as f:
            f.write(str(value))


def nft(rules: str) -> None:
    sh("nft", "-f", "-", stdin=rules)


def nft_counters() -> dict[str, int]:
    """packets per rule comment, and per named counter object"""
    out = {}
    for item in json.loads(sh("nft", "-j", "list", "ruleset"))["nftables"]:
        if "counter" in item:
            out[item["counter"]["name"]] = item["counter"]["packets"]
        rule = item.get("rule")
        if rule and "comment" in rule:
            for expr in rule["expr"]:
                if "counter" in expr:
                    out[rule["comment"]] = expr["counter"]["packets"]
    return out


def expect(sock_name, peer_name, family: int, path: str, outcome: str, **extra) -> dict:
    return {"path": path, "outcome": outcome, "family": family,
            "saddr": sock_name[0], "sport": sock_name[1],
            "daddr": peer_name[0], "dport": peer_name[1], **extra}


def failed_name(c: socket.socket) -> tuple:
    """After a failed connect() getsockname() keeps the port but reads address 0.0.0.0."""
    return (LO4, c.getsockname()[1])


def me() -> dict:
    """The process an open is attributed to: connect()'s caller, or the listener's owner.
    Its cgroup id comes from the harness: `ip netns exec` hides the cgroup2 mount."""
    return {"pid": os.getpid(), "comm": open("/proc/self/comm").read().strip(),
            "cgroup": int(os.environ["TCPTRACE_TEST_CGROUP"])}


# ------------------------------------------------------------------------ scenarios
def normal(fam: int) -> dict:
    af, lo = (socket.AF_INET, LO4) if fam == 4 else (socket.AF_INET6, LO6)
    srv = socket.socket(af)
    srv.bind((lo, 0))
    srv.listen()
    cli = socket.create_connection(srv.getsockname()[:2])
    conn, _ = srv.accept()
    c, s = cli.getsockname()[:2], srv.getsockname()[:2]
    out = [expect(c, s, fam, "active", "established", syn_retransmits=0, synack_retransmits=0,
                  states=["CLOSE", "SYN_SENT", "ESTABLISHED"], **me()),
           expect(s, c, fam, "passive", "established", syn_retransmits=0, synack_retransmits=0,
                  states=["LISTEN", "SYN_RECV", "ESTABLISHED"], **me())]
    cli.close(), conn.close(), srv.close()
    return {"expect": out}


def self_connect(fam: int) -> dict:
    af, lo = (socket.AF_INET, LO4) if fam == 4 else (socket.AF_INET6, LO6)
    s = socket.socket(af)
    s.bind((lo, 0))
    s.connect(s.getsockname()[:2])
    name = s.getsockname()[:2]
    assert s.getpeername()[:2] == name
    s.close()
    return {"expect": [expect(name, name, fam, "self", "established", syn_retransmits=0,
                              states=["CLOSE", "SYN_SENT", "SYN_RECV", "ESTABLISHED"], **me())]}


def mapped() -> dict:
    """A dual-stack listener on :: : an IPv4 client, and an IPv6 client that connects to the
    v4-mapped address. The listener's children and that client are AF_INET6 sockets whose
    addresses are ::ffff:127.0.0.1, the form getsockname() (inet_ntop) gives."""
    srv = socket.socket(socket.AF_INET6)
    srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    srv.bind(("::", 0))
    srv.listen()
    port = srv.getsockname()[1]
    c4 = socket.create_connection((LO4, port))
    s4, _ = srv.accept()
    c6 = socket.socket(socket.AF_INET6)
    c6.connect(("::ffff:" + LO4, port))
    s6, _ = srv.accept()
    out = []
    for cli, child, fam in ((c4, s4, 4), (c6, s6, 6)):
        s = child.getsockname()[:2]
        assert s[0] == "::ffff:" + LO4, s
        out += [expect(cli.getsockname()[:2], cli.getpeername()[:2], fam, "active", "established",
                       states=["CLOSE", "SYN_SENT", "ESTABLISHED"], **me()),
                expect(s, child.getpeername()[:2], 6, "passive", "established",
                       states=["LISTEN", "SYN_RECV", "ESTABLISHED"], **me())]
    for sock in (c4, s4, c6, s6, srv):
        sock.close()
    return {"expect": out}


TCP_STATE_ESTABLISHED = 1


def tcp_state(s: socket.socket) -> int:
    """The kernel's state of a TCP socket: tcpi_state, the first byte of struct tcp_info."""
    return s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]


def crossed(fam: int) -> dict:
    """Two sockets connect() to each other while an nft rule drops their first SYNs; both
    SYNs are re-sent in the same timer run and cross. One attempt: if the open was not a
    crossed one on both sides, it says {"retry": why} and the harness runs it again in a
    fresh namespace, so no test ever sees the abandoned attempt's records.

    Both sides crossed exactly when each socket received a SYN-ACK: only a socket that went
    SYN_SENT > SYN_RECV (a bare SYN arrived while it was in SYN_SENT) sends one. One-sided
    runs happen: the two 1 s SYN timers can fall in different timer-wheel buckets (32 ms
    apart at HZ=250), and then the first re-sent SYN opens the other side, which answers
    with a SYN-ACK: its peer becomes a plain active open. An aggregate "two SYN-ACKs
    arrived" does not tell that apart, as the second side may re-send its SYN-ACK. Nor does
    SO_ERROR == 0, which a socket still connecting also reads: tcpi_state must say
    ESTABLISHED. Per-port counters also give each socket's re-sends, which are expected."""
    af, lo = (socket.AF_INET, LO4) if fam == 4 else (socket.AF_INET6, LO6)
    a, b = socket.socket(af), socket.socket(af)
    a.bind((lo, 0)), b.bind((lo, 0))
    pa, pb = a.getsockname()[1], b.getsockname()[1]
    bare, synack = "tcp flags & (syn|ack) == syn", "tcp flags & (syn|ack) == syn|ack"
    # named counters: the drop counts outlive the chain deleted below
    nft(f"""flush ruleset
table inet t {{
  counter dropped_{pa} {{}}
  counter dropped_{pb} {{}}
  counter syn_{pa} {{}}
  counter syn_{pb} {{}}
  counter synack_{pa} {{}}
  counter synack_{pb} {{}}
  chain in {{ type filter hook input priority 0;
    tcp dport {pa} {bare} counter name "dropped_{pa}" drop
    tcp dport {pb} {bare} counter name "dropped_{pb}" drop
  }}
  chain count {{ type filter hook input priority 10;
    tcp dport {pa} {bare} counter name "syn_{pa}"
    tcp dport {pb} {bare} counter name "syn_{pb}"
    tcp dport {pa} {synack} counter name "synack_{pa}"
    tcp dport {pb} {synack} counter name "synack_{pb}"
  }}
}}""")
    a.setblocking(False), b.setblocking(False)
    a.connect_ex(b.getsockname()[:2]), b.connect_ex(a.getsockname()[:2])
    time.sleep(0.02)
    sh("nft", "delete", "chain", "inet", "t", "in")
    pending, deadline = [a, b], time.monotonic() + 5
    while pending and time.monotonic() < deadline:
        _, ready, _ = select.select([], pending, [], max(0.0, deadline - time.monotonic()))
        pending = [s for s in pending if s not in ready]
    states = [tcp_state(s) for s in (a, b)]
    counters = nft_counters()
    names = [s.getsockname()[:2] for s in (a, b)]
    a.close(), b.close()
    got = {p: {k: counters.get(f"{k}_{p}", 0) for k in ("dropped", "syn", "synack")}
           for p in (pa, pb)}
    if states != [TCP_STATE_ESTABLISHED] * 2 or not (got[pa]["synack"] and got[pb]["synack"]):
        return {"retry": f"not crossed on both sides: tcpi_state {states}, per port {got}",
                "counters": counters}
    out = []
    for (me_, peer), to in ((names, pb), (names[::-1], pa)):
        # this socket's SYNs and SYN-ACKs went to the peer's port `to`
        out.append(expect(me_, peer, fam, "simultaneous", "established",
                          syn_retransmits=got[to]["dropped"] + got[to]["syn"] - 1,
                          synack_retransmits=got[to]["synack"] - 1,
                          states=["CLOSE", "SYN_SENT", "SYN_RECV", "ESTABLISHED"], **me()))
    return {"expect": out, "counters": counters}


def refused() -> dict:
    probe = socket.socket()
    probe.bind((LO4, 0))
    port = probe.getsockname()[1]
    probe.close()  # a port nobody listens on
    c = socket.socket()
    err = c.connect_ex((LO4, port))
    assert err == errno.ECONNREFUSED, err
    name = failed_name(c)
    c.close()
    return {"expect": [expect(name, (LO4, port), 4, "active", "refused", syn_retransmits=0,
                              states=["CLOSE", "SYN_SENT", "CLOSE"], **me())]}


def _drop_syns_to(port: int) -> None:
    # on input, not output: an output drop fails the send and hides the retransmit
    nft(f"""flush ruleset
table inet t {{ chain in {{ type filter hook input priority 0;
  tcp dport {port} tcp flags & (syn|ack) == syn counter drop comment "syn_dropped"
  }}
}}""")


def syn_timeout() -> dict:
    netns_setup(tcp_syn_retries=1)
    port = 9
    _drop_syns_to(port)
    c = socket.socket()
    # non-blocking: a blocking connect() that fails resets the socket (tcp_disconnect()) and
    # with it the SYN re-send count the tracer reads if it has to repair a missed SYN_SENT >
    # CLOSE at the destruction (bpf/tcptrace.bpf.c repair_missed())
    c.setblocking(False)
    t0 = time.monotonic()
    assert c.connect_ex((LO4, port)) == errno.EINPROGRESS
    select.select([], [c], [], 30)
    took = time.monotonic() - t0
    err = c.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    assert err == errno.ETIMEDOUT, err
    name = failed_name(c)
    c.close()
    sent = nft_counters()["syn_dropped"]
    return {"expect": [expect(name, (LO4, port), 4, "active", "timeout", syn_retransmits=sent - 1,
                              states=["CLOSE", "SYN_SENT", "CLOSE"], **me())],
            "took_s": took}


def unreachable() -> dict:
    port = 9
    nft(f"""flush ruleset
table inet t {{ chain in {{ type filter hook input priority 0;
  tcp dport {port} tcp flags & (syn|ack) == syn counter reject with icmp type host-unreachable comment "rejected"
  }}
}}""")
    c = socket.socket()
    err = c.connect_ex((LO4, port))
    assert err == errno.EHOSTUNREACH, err
    name = failed_name(c)
    c.close()
    return {"expect": [expect(name, (LO4, port), 4, "active", "unreachable",
                              errno=errno.EHOSTUNREACH, states=["CLOSE", "SYN_SENT", "CLOSE"], **me())]}


def port_exhausted(fam: int) -> dict:
    """Two local ports for the whole namespace, both taken by connections to the listener:
    a third connect() to it finds no free port (EADDRNOTAVAIL, before any SYN)."""
    af, lo = (socket.AF_INET, LO4) if fam == 4 else (socket.AF_INET6, LO6)
    with open("/proc/sys/net/ipv4/ip_local_port_range", "w") as f:  # both families' range
        f.write("40000 40001")
    srv = socket.socket(af)
    srv.bind((lo, 5000))  # outside the range, so the clients have both ports
    srv.listen()
    s = srv.getsockname()[:2]
    out, held = [], []
    for _ in range(2):
        cli = socket.create_connection(s)
        held += [cli, srv.accept()[0]]
        c = cli.getsockname()[:2]
        out += [expect(c, s, fam, "active", "established", syn_retransmits=0,
                       states=["CLOSE", "SYN_SENT", "ESTABLISHED"], **me()),
                expect(s, c, fam, "passive", "established", synack_retransmits=0,
                       states=["LISTEN", "SYN_RECV", "ESTABLISHED"], **me())]
    assert sorted(h.getsockname()[1] for h in held[::2]) == [40000, 40001]
    third = socket.socket(af)
    err = third.connect_ex(s)
    assert err == errno.EADDRNOTAVAIL, err
    assert third.getsockname()[1] == 0  # no port was ever taken
    third.close()
    # the address is the route's source, chosen before the port search failed
    out.append(expect((lo, 0), s, fam, "active", "port_exhausted", errno=errno.EADDRNOTAVAIL,
                      syn_retransmits=0, states=["CLOSE", "SYN_SENT", "CLOSE"], **me()))
    for h in held + [srv]:
        h.close()
    return {"expect": out}


def abort_syn_sent() -> dict:
    port = 9
    _drop_syns_to(port)
    c = socket.socket()
    c.setblocking(False)
    assert c.connect_ex((LO4, port)) == errno.EINPROGRESS
    time.sleep(0.05)
    name = failed_name(c)
    c.close()  # the application gives up while still in SYN_SENT
    return {"expect": [expect(name, (LO4, port), 4, "active", "aborted", syn_retransmits=0,
                              states=["CLOSE", "SYN_SENT", "CLOSE"], **me())]}


def synack_loss() -> dict:
    """The client never sees a SYN-ACK: its SYNs time out, and the listener's request socket
    re-sends SYN-ACKs until tcp_synack_retries runs out. Only tcp_retransmit_synack sees it."""
    netns_setup(tcp_syn_retries=1, tcp_synack_retries=1)
    srv = socket.socket()
    srv.bind((LO4, 0))
    srv.listen()
    port = srv.getsockname()[1]
    nft(f"""flush ruleset
table inet t {{ chain in {{ type filter hook input priority 0;
  tcp sport {port} tcp flags & (syn|ack) == syn|ack counter drop comment "synack_dropped"
  }}
}}""")
    c = socket.socket()
    err = c.connect_ex((LO4, port))
    assert err == errno.ETIMEDOUT, err
    name = failed_name(c)
    c.close()
    time.sleep(1.5)  # the request's last timer runs after the client gave up
    dropped = nft_counters()["synack_dropped"]
    srv.close()
    return {"expect": [
        expect(name, (LO4, port), 4, "active", "timeout", **me()),
        expect((LO4, port), name, 4, "passive", "timeout", synack_retransmits=dropped - 1,
               **me())]}


def burst(count: int = 1200) -> dict:
    """`count` connections in flight at once: non-blocking connect()s to one listener."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 3 * count + 64), max(hard, 3 * count + 64)))
    srv = socket.socket()
    srv.bind((LO4, 0))
    srv.listen(4096)
    addr = srv.getsockname()
    clients = []
    for _ in range(count):
        c = socket.socket()
        c.setblocking(False)
        c.connect_ex(addr)
        clients.append(c)
    accepted = []
    srv.settimeout(10)
    while len(accepted) < count:
        accepted.append(srv.accept()[0])
    ok = sum(1 for c in clients if c.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0)
    for s in clients + accepted:
        s.close()
    srv.close()
    return {"count": count, "clients_ok": ok, "accepted": len(accepted)}


def refused_many(count: int = REFUSED_MANY) -> dict:
    return {"results": [refused() for _ in range(count)]}


def held_in_syn_sent(count: int = 300) -> dict:
    """`count` sockets in SYN_SENT at once (their SYNs dropped), then closed: more handshakes
    in flight than a small kernel table holds."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (4 * count, 4 * count))
    port = 9
    _drop_syns_to(port)
    socks = []
    for _ in range(count):
        c = socket.socket()
        c.setblocking(False)
        c.connect_ex((LO4, port))
        socks.append(c)
    time.sleep(0.2)
    for c in socks:
        c.close()
    return {"count": count}


def stuck_syn_sent(hold: float = 4.0) -> dict:
    """One socket in SYN_SENT (its SYNs dropped) held `hold` seconds, then closed: longer
    than a short --half-open-timeout."""
    port = 9
    _drop_syns_to(port)
    c = socket.socket()
    c.setblocking(False)
    c.connect_ex((LO4, port))
    time.sleep(hold)
    c.close()
    return {"held": hold}


SCENARIOS = {
    "normal4": lambda: normal(4), "normal6": lambda: normal(6),
    "self4": lambda: self_connect(4), "self6": lambda: self_connect(6),
    "crossed4": lambda: crossed(4), "crossed6": lambda: crossed(6), "mapped": mapped,
    "refused": refused, "syn_timeout": syn_timeout, "unreachable": unreachable,
    "abort_syn_sent": abort_syn_sent,
    "port_exhausted4": lambda: port_exhausted(4), "port_exhausted6": lambda: port_exhausted(6), "synack_loss": synack_loss, "burst": burst,
    "refused_many": refused_many, "held_in_syn_sent": held_in_syn_sent,
    "stuck_syn_sent": stuck_syn_sent,
}


def main(name: str) -> None:
    if name not in ("syn_timeout", "synack_loss"):
        netns_setup()
    result = SCENARIOS[name]()
    result.update(scenario=name, netns=os.stat("/proc/self/ns/net").st_ino, pid=os.getpid())
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1])
