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

if __package__:
    from .listener_oracle import mib, mib_delta, ss_listeners
else:  # run as a script, or imported with tests/kernel on sys.path
    from listener_oracle import mib, mib_delta, ss_listeners

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


# ------------------------------------------------------------------------ listener side
# Each returns the namespace's TcpExt change over the scenario ("mib"), every listener's ss row
# ("listeners") and the clients' own view ("expect"), all read while the sockets are still
# open; finish() then closes them. Kernel paths: docs/design/listener-side.md.
TCPI_OPT_SYN_DATA = 32  # tcpi_options: data in the SYN was acked (client) or taken (server)
_PRINTED = False  # finish() printed the result already (TCPTRACE_HOLD)


def _listener(lo: str, backlog: int, **sockopts: int) -> socket.socket:
    srv = socket.socket(socket.AF_INET6 if ":" in lo else socket.AF_INET)
    if lo == "::":  # dual-stack
        srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    for opt, value in sockopts.items():
        srv.setsockopt(socket.IPPROTO_TCP, getattr(socket, opt), value)
    srv.bind((lo, 0))
    srv.listen(backlog)
    return srv


def _until(done, what: str, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.005)


def _connect(addr: tuple, wait: float = 0.05) -> socket.socket:
    """A non-blocking connect(), then up to `wait` s for its outcome: clients go one at a
    time, so each SYN meets the queues its predecessors left (loopback answers in µs)."""
    c = socket.socket(socket.AF_INET6 if ":" in addr[0] else socket.AF_INET)
    c.setblocking(False)
    assert c.connect_ex(addr) == errno.EINPROGRESS
    select.select([], [c], [], wait)
    return c


def _wait_done(clients: list, timeout: float = 10.0) -> list[int]:
    """Each client's connect() errno (SO_ERROR), once every one has connected or failed."""
    pending, deadline = list(clients), time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        _, ready, _ = select.select([], pending, [], max(0.0, deadline - time.monotonic()))
        pending = [s for s in pending if s not in ready]
    assert not pending, f"{len(pending)} clients still connecting"
    return [c.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) for c in clients]


def _no_requests() -> bool:
    """ss lists request sockets as SYN-RECV: the SYN queues are empty when it lists none."""
    return not sh("ss", "-tnH", "state", "syn-recv").strip()


def _hold_acks(port: int) -> None:
    """Drop the final ACK (and any data, which acks too) on its way to `port`: the
    handshakes stay request sockets in the SYN queue. On input, so the clients send them."""
    nft(f"""flush ruleset
table inet hold {{ chain in {{ type filter hook input priority 0;
  tcp dport {port} tcp flags & (syn|ack|fin|rst) == ack counter drop comment "acks_held"
  }}
}}""")


def _freeze(port: int) -> None:
    """Stop every packet to and from `port` for good, so the listener's figures stop moving
    (request sockets left would re-send SYN-ACKs, clients re-send data, each arrival another
    overflow). The SYN-ACKs are dropped on output: a failed send counts no retransmit."""
    nft(f"""flush ruleset
table inet freeze {{
  chain in {{ type filter hook input priority 0; tcp dport {port} drop; }}
  chain out {{ type filter hook output priority 0; tcp sport {port} drop; }}
}}""")


def _recv_errno(c: socket.socket) -> int:
    """0 while the connection stands (nothing to read), else its error: ECONNRESET."""
    try:
        c.recv(1, socket.MSG_DONTWAIT)
    except BlockingIOError:
        return 0
    except OSError as e:
        return e.errno
    return 0


def _client_expect(clients: list, errs: list[int], srv_name: tuple, fam: int, **extra) -> list:
    """The clients' opens as the kernel ended them: connected, or SO_ERROR's errno. A failed
    client's getsockname() keeps only the port; on loopback its address is the server's."""
    out = []
    for c, err in zip(clients, errs):
        name = c.getsockname()[:2] if not err else (srv_name[0], c.getsockname()[1])
        outcome = {0: "established", errno.ETIMEDOUT: "timeout"}[err]
        out.append(expect(name, srv_name, fam, "active", outcome, **extra, **me()))
    return out


def finish(before: dict, listeners: list[tuple[str, socket.socket]], others: list,
           **result) -> dict:
    """Read the MIB change since `before` and each listener's ss row while everything is
    open. With TCPTRACE_HOLD set, print the result now and keep the sockets open until stdin
    closes: a test looks at the live listeners meanwhile. Then close them all."""
    global _PRINTED
    rows, rec = ss_listeners(), []
    for label, srv in listeners:
        fam, (addr, port) = (6 if srv.family == socket.AF_INET6 else 4), srv.getsockname()[:2]
        row = [r for r in rows if r["family"] == fam and r["port"] == port]
        assert len(row) == 1, (label, rows)
        rec.append({"label": label, "family": fam, "addr": addr, "port": port, "ss": row[0]})
    result.update(mib=mib_delta(before, mib()), listeners=rec)
    if os.environ.get("TCPTRACE_HOLD"):
        emit(result)
        _PRINTED = True
        sys.stdin.read()
    for s in others + [srv for _, srv in listeners]:
        s.close()
    return result


def acceptq_syn(clients: int = 8) -> dict:
    """listen(1), never accept(): two children fill the accept queue (full is backlog + 1),
    then every SYN, re-sends included, is dropped at the listener (ListenOverflows and
    ListenDrops, sk_drops +1 each) until the clients time out (tcp_syn_retries=1)."""
    before = mib()
    srv = _listener(LO4, 1)
    cs = [_connect(srv.getsockname()) for _ in range(clients)]
    errs = _wait_done(cs)
    return finish(before, [("overflow", srv)], cs,
                  expect=_client_expect(cs, errs, srv.getsockname(), 4))


def acceptq_ack(abort: int, clients: int = 6) -> dict:
    """The accept queue overflows when the final ACK arrives: six handshakes wait in the SYN
    queue (their ACKs held by nft) under listen(8); listen(1) then shrinks the accept queue
    to two, and each client sends a byte, which completes its handshake. The first two
    become children; the other four meet a full queue in tcp_v4_syn_recv_sock
    (ListenOverflows, ListenDrops, sk_drops +2: the skb is freed as TCP_LISTEN_OVERFLOW).
    tcp_abort_on_overflow=0 keeps those requests (marked acked); =1 answers with a RST, which
    the client reads as ECONNRESET. Then _freeze(): the clients' re-sent bytes would
    overflow again."""
    before = mib()
    srv = _listener(LO4, 8)
    port = srv.getsockname()[1]
    _hold_acks(port)
    cs = [_connect(srv.getsockname()) for _ in range(clients)]
    assert _wait_done(cs) == [0] * clients  # the client side is established at the SYN-ACK
    srv.listen(1)  # on a listener only changes the backlog
    sh("nft", "delete", "table", "inet", "hold")

    def handled() -> int:  # each byte either made a child or overflowed
        row = next(r for r in ss_listeners() if r["port"] == port)
        return row["accept_queue"] + mib_delta(before, mib()).get("ListenOverflows", 0)

    for i, c in enumerate(cs, 1):
        c.send(b"x")
        _until(lambda: handled() == i, f"client {i}'s byte")  # one at a time, like _connect
    _freeze(port)
    exp = _client_expect(cs, [0] * clients, srv.getsockname(), 4)
    return finish(before, [("overflow", srv)], cs, expect=exp,
                  clients=[{"sport": e["sport"], "recv_errno": _recv_errno(c)}
                           for e, c in zip(exp, cs)])


def synq_full(clients: int = 8) -> dict:
    """No syncookies, listen(2), final ACKs held: three requests fill the SYN queue (full is
    qlen > backlog) and every further SYN, re-sends included, is dropped (TCPReqQFullDrop,
    ListenDrops, sk_drops +1 each) until those clients time out. tcp_synack_retries=1: the
    requests re-send their SYN-ACK once and expire at 3 s, with the clients' timeouts."""
    before = mib()
    srv = _listener(LO4, 2)
    _hold_acks(srv.getsockname()[1])
    cs = [_connect(srv.getsockname()) for _ in range(clients)]
    errs = _wait_done(cs)
    _until(_no_requests, "the requests to expire")
    return finish(before, [("synq", srv)], cs,
                  expect=_client_expect(cs, errs, srv.getsockname(), 4))


def cookies_always(clients: int = 3) -> dict:
    """tcp_syncookies=2: every SYN is answered with a cookie and no request socket; each
    final ACK is checked as a cookie (SyncookiesRecv) and makes the child."""
    before = mib()
    srv = _listener(LO4, 8)
    cs, children = [], []
    for _ in range(clients):
        cs.append(socket.create_connection(srv.getsockname()))
        children.append(srv.accept()[0])
    s = srv.getsockname()
    # no request socket ever existed: every child was rebuilt from its cookie, which the
    # kernel counts (SyncookiesRecv), and none has a SYN-ACK send time to time it by
    got = mib_delta(before, mib())
    assert got.get("SyncookiesRecv") == clients == got.get("SyncookiesSent"), got
    exp = [expect(c.getsockname(), s, 4, "active", "established", flags=[], **me()) for c in cs]
    exp += [expect(s, c.getsockname(), 4, "passive", "established", flags=["syncookie"],
                   duration_s=None, **me()) for c in cs]
    return finish(before, [("cookies", srv)], cs + children, expect=exp)


def cookies_overflow(held: int = 3, cookies: int = 3) -> dict:
    """tcp_syncookies=1 and a real SYN-queue overflow: listen(2), final ACKs held, three
    requests fill the SYN queue; the next SYNs get cookies (TCPReqQFullDoCookies,
    SyncookiesSent). Then each client in turn sends a byte, which completes its handshake,
    and the child is accepted (the accept queue takes only three): the held ones as
    requests, the cookie ones through cookie_v4_check (SyncookiesRecv). All before the
    requests' first SYN-ACK re-send (1 s)."""
    before = mib()
    srv = _listener(LO4, 2)
    _hold_acks(srv.getsockname()[1])
    cs = [_connect(srv.getsockname()) for _ in range(held + cookies)]
    assert _wait_done(cs) == [0] * len(cs)
    sh("nft", "delete", "table", "inet", "hold")
    children = []
    for c in cs:
        c.send(b"x")
        children.append(srv.accept()[0])
    s = srv.getsockname()
    got = mib_delta(before, mib())
    assert got.get("SyncookiesSent") == got.get("SyncookiesRecv") == cookies, got
    # the SYNs that found the SYN queue full (held + 1 > backlog 2) are the cookie ones
    exp = [expect(c.getsockname(), s, 4, "active", "established", flags=[], **me()) for c in cs]
    exp += [expect(s, c.getsockname(), 4, "passive", "established", flags=[], **me())
            for c in cs[:held]]
    exp += [expect(s, c.getsockname(), 4, "passive", "established", flags=["syncookie"],
                   duration_s=None, **me()) for c in cs[held:]]
    return finish(before, [("cookies", srv)], cs + children, expect=exp,
                  cookie_clients=[c.getsockname()[1] for c in cs[held:]])


def _tcpi_options(s: socket.socket) -> int:
    return s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[5]


def fastopen(clients: int = 3) -> dict:
    """tcp_fastopen=3, TCP_FASTOPEN on the listener, each client sendto(MSG_FASTOPEN): the
    first has no cookie yet (a plain handshake that fetches one, the data follows it), the
    others put their data in the SYN and the listener makes the child at once, in SYN_RECV
    (TCPFastOpenPassive; TCPFastOpenActive when the SYN-ACK acks the data). Which sockets
    were Fast Open is the kernel's word: TCP_INFO's tcpi_options has TCPI_OPT_SYN_DATA when
    the SYN's data was acked (client, syn_data_acked) or taken by the child (server: the
    kernel sets syn_data_acked on a Fast Open child in tcp_fastopen_add_skb)."""
    before = mib()
    srv = _listener(LO4, 8, TCP_FASTOPEN=8)
    s = srv.getsockname()
    exp, socks = [], []
    for i in range(clients):
        c = socket.socket()
        c.sendto(b"hello %d" % i, socket.MSG_FASTOPEN, s)  # returns once the SYN is out
        child = srv.accept()[0]
        assert child.recv(100) == b"hello %d" % i
        select.select([], [c], [], 1)  # the client has taken the SYN-ACK: syn_data_acked is set
        socks += [c, child]
        for sock, me_, peer, path in ((c, c, srv, "active"), (child, srv, c, "passive")):
            exp.append(expect(me_.getsockname(), peer.getsockname(), 4, path, "established",
                              flags=["fastopen"] if _tcpi_options(sock) & TCPI_OPT_SYN_DATA
                              else [], **me()))
    return finish(before, [("fastopen", srv)], socks, expect=exp)


def dualstack() -> dict:
    """One listener on [::] (IPV6_V6ONLY off), listen(1): an IPv4 and an IPv6 client fill
    its accept queue, then one more of each has every SYN dropped (accept queue full at SYN
    time) until it times out. The kernel counts both families on the one AF_INET6
    listener."""
    before = mib()
    srv = _listener("::", 1)
    port = srv.getsockname()[1]
    cs = [_connect((lo, port)) for lo in (LO4, LO6, LO4, LO6)]
    errs = _wait_done(cs)
    exp = []
    for c, err, fam, lo in zip(cs, errs, (4, 6, 4, 6), (LO4, LO6) * 2):
        exp += _client_expect([c], [err], (lo, port), fam)
    return finish(before, [("dualstack", srv)], cs, expect=exp)


def multi_listener() -> dict:
    """Three listeners in one namespace (tcp_syncookies=0, which is per namespace), each
    with figures of its own kind: A (v4, listen(1)) overflows its accept queue at SYN time
    for one client; B (v4, listen(2), final ACKs held) fills its SYN queue with three
    requests and drops two more clients' SYNs; C (v6) accepts three clients normally."""
    before = mib()
    a, b, c = _listener(LO4, 1), _listener(LO4, 2), _listener(LO6, 8)
    _hold_acks(b.getsockname()[1])
    ca = [_connect(a.getsockname()) for _ in range(3)]
    cb = [_connect(b.getsockname()) for _ in range(5)]
    cc = [socket.create_connection(c.getsockname()[:2]) for _ in range(3)]
    children = [c.accept()[0] for _ in cc]
    errs = _wait_done(ca + cb)
    _until(_no_requests, "B's requests to expire")
    exp = _client_expect(ca, errs[:3], a.getsockname(), 4)
    exp += _client_expect(cb, errs[3:], b.getsockname(), 4)
    sc = c.getsockname()[:2]
    for x in cc:
        exp += [expect(x.getsockname()[:2], sc, 6, "active", "established", **me()),
                expect(sc, x.getsockname()[:2], 6, "passive", "established", **me())]
    return finish(before, [("A", a), ("B", b), ("C", c)], ca + cb + cc + children, expect=exp)


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


SCENARIOS.update({
    "acceptq_syn": acceptq_syn, "acceptq_ack": lambda: acceptq_ack(0),
    "acceptq_ack_abort": lambda: acceptq_ack(1), "synq_full": synq_full,
    "cookies_always": cookies_always, "cookies_overflow": cookies_overflow,
    "fastopen": fastopen, "dualstack": dualstack, "multi_listener": multi_listener,
})
# the namespace's sysctls each listener scenario needs (a fresh namespace has
# tcp_syncookies=1, tcp_fastopen=1, tcp_abort_on_overflow=0, tcp_syn_retries=6)
SYSCTLS = {
    "acceptq_syn": dict(tcp_syn_retries=1), "acceptq_ack": dict(tcp_abort_on_overflow=0),
    "acceptq_ack_abort": dict(tcp_abort_on_overflow=1),
    "synq_full": dict(tcp_syncookies=0, tcp_syn_retries=1, tcp_synack_retries=1),
    "cookies_always": dict(tcp_syncookies=2), "cookies_overflow": dict(tcp_syncookies=1),
    "fastopen": dict(tcp_fastopen=3), "dualstack": dict(tcp_syn_retries=1),
    "multi_listener": dict(tcp_syncookies=0, tcp_syn_retries=1, tcp_synack_retries=1),
}
_NAME = ""


def emit(result: dict) -> None:
    result.update(scenario=_NAME, netns=os.stat("/proc/self/ns/net").st_ino, pid=os.getpid())
    print(json.dumps(result), flush=True)


def main(name: str) -> None:
    global _NAME
    _NAME = name
    if name not in ("syn_timeout", "synack_loss"):
        netns_setup(**SYSCTLS.get(name, {}))
    result = SCENARIOS[name]()
    if not _PRINTED:  # finish() prints early under TCPTRACE_HOLD
        emit(result)


if __name__ == "__main__":
    main(sys.argv[1])
