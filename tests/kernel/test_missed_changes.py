"""State changes the kernel makes with no program run for them, repaired at the socket's
destruction (bpf/tcptrace.bpf.c repair_missed()). The kernel skips both deliveries of a change
now and then (CI saw SYN_SENT > CLOSE made by the SYN timer's softirq missed: a timeout and an
ICMP error reported as `aborted`); nothing can make the kernel do that on demand, so these tests
take the state-change programs away themselves while a real socket is in SYN_SENT, let the
kernel end its open, put them back, and check that the destruction record tells the socket's
own outcome (its errno, the nft counters) and that the repair is counted.

Each case runs a child in its own network namespace, stepped over a pipe: it reaches SYN_SENT,
waits while the programs are taken away, then reports what its socket saw."""

import errno
import json
import os
import subprocess
import sys
import time

import pytest

from tcptrace_bpf import bpfsys, loader, wire
from tcptrace_bpf.model import OpenPath, Outcome, TcpState
from tcptrace_bpf.tracker import Classifier

from tests.background import ROOT

from .conftest import kernel_ready

CHILD = r"""
import errno, json, select, socket, sys, threading, time
sys.path.insert(0, sys.argv[1])
from scenarios import LO4, _drop_syns_to, netns_setup, nft, nft_counters, sh, tcp_state

case = sys.argv[2]
netns_setup(tcp_syn_retries=1)
port = 9
if case == "unreachable":
    nft(f'''flush ruleset
table inet t {{ chain in {{ type filter hook input priority 0;
  tcp dport {port} tcp flags & (syn|ack) == syn counter reject with icmp type host-unreachable comment "syn_dropped"
  }}
}}''')
else:
    _drop_syns_to(port)
srv = None
if case == "established":
    srv = socket.socket(); srv.bind((LO4, port)); srv.listen()
c = socket.socket()
result = {}
def connect():
    if case == "unreachable":  # blocking, as in the CI failure: the ICMP error met while
        # connect() holds the socket is kept as soft, the SYN re-sent after 1 s meets the next
        result["errno"] = c.connect_ex((LO4, port))
    else:  # non-blocking: a blocking connect() that fails wipes the socket's counters
        c.setblocking(False)  # (tcp_disconnect()), SO_ERROR does not
        assert c.connect_ex((LO4, port)) == errno.EINPROGRESS
        select.select([], [c], [], 10)
        result["errno"] = c.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
th = threading.Thread(target=connect)
th.start()
while tcp_state(c) != 2 or not c.getsockname()[1]:
    time.sleep(0.001)                       # until SYN_SENT, its port bound
print(json.dumps({"sport": c.getsockname()[1]}), flush=True)
sys.stdin.readline()                        # the programs are gone
state_then = tcp_state(c)                   # still SYN_SENT: its end is theirs to miss
if case == "established":
    sh("nft", "flush", "ruleset")           # the SYN re-sent after 1 s gets through
th.join(10)
syn_dropped = nft_counters()["syn_dropped"] if case != "established" else None  # flushed
print(json.dumps({"errno": result["errno"], "syn_dropped": syn_dropped, "state_then": state_then}),
      flush=True)
sys.stdin.readline()                        # the programs are back
if srv:
    srv.accept()[0].close()
c.close()
print("{}", flush=True)
"""

# the state-change programs' attachments (BpfPrograms.attachments) -> how to put each back
# (the second delivery is a second raw tracepoint program: loader.SECOND_DELIVERIES_TRACEPOINT)
RAW = "raw_tracepoint:inet_sock_set_state"
AGAIN = "raw_tracepoint:" + loader.second_key("inet_sock_set_state").decode()


def _take_away(t):
    for name in (RAW, AGAIN):
        os.close(t.attachments.pop(name))


def _put_back(t):
    t.attachments[RAW] = bpfsys.raw_tracepoint_open(
        t.programs["raw_tracepoint__inet_sock_set_state"], "inet_sock_set_state")
    t.attachments[AGAIN] = bpfsys.raw_tracepoint_open(
        t.programs["tt_again_inet_sock_set_state"], "inet_sock_set_state")


@pytest.fixture(scope="module")
def programs():
    kernel_ready()
    with loader.BpfPrograms.start("tracepoint") as t:
        records: list[wire.WireRecord] = []
        t.open_ring(lambda buf: records.append(wire.decode(buf)))
        t.records = records
        yield t


# case -> (outcome, errno the socket saw, states)
CASES = {
    "timeout": (Outcome.TIMEOUT, errno.ETIMEDOUT, ["CLOSE", "SYN_SENT", "CLOSE"]),
    "unreachable": (Outcome.UNREACHABLE, errno.EHOSTUNREACH, ["CLOSE", "SYN_SENT", "CLOSE"]),
    "established": (Outcome.ESTABLISHED, 0, ["CLOSE", "SYN_SENT", "ESTABLISHED"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_missed_end_of_an_active_open_is_repaired_and_counted(programs, case):
    outcome, want_errno, states = CASES[case]
    child = subprocess.Popen(["unshare", "-n", sys.executable, "-c", CHILD,
                              str(ROOT / "tests" / "kernel"), case],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        sport = json.loads(child.stdout.readline())["sport"]
        missed_before = programs.kernel_lost()["missed_state_change"]
        _take_away(programs)
        try:
            child.stdin.write("\n"); child.stdin.flush()
            seen = json.loads(child.stdout.readline())
        finally:
            _put_back(programs)
        child.stdin.write("\n"); child.stdin.flush()
        child.stdout.readline()
        assert child.wait(timeout=10) == 0
    finally:
        child.kill()
    assert seen["errno"] == want_errno, seen
    assert seen["state_then"] == TcpState.SYN_SENT, f"the open ended before the programs were gone: {seen}"
    deadline = time.monotonic() + 5
    mine = []
    while not mine and time.monotonic() < deadline:
        programs.poll(100)
        mine = [r for r in programs.records if r.kind == wire.KIND_OPEN and r.sport == sport
                and r.dport == 9]
    assert len(mine) == 1, mine
    rec = mine[0]
    assert rec.flags & wire.F_DESTROYED and rec.flags & wire.F_REPAIRED, hex(rec.flags)
    assert [TcpState.name_of(s) for s in rec.states] == states
    assert rec.sk_err == want_errno
    if case == "timeout":  # the failed blocking connect() of "unreachable" wiped the count
        assert rec.syn_retrans == seen["syn_dropped"] - 1
    (attempt,) = Classifier(0.0).feed(rec)
    assert (attempt.path, attempt.outcome) == (OpenPath.ACTIVE, outcome)
    assert programs.kernel_lost()["missed_state_change"] == missed_before + 1
