"""Crossed-SYN simultaneous opens, many at once (issue 10, item 5): 200 of them, IPv4 and
IPv6, 25 namespaces at a time, against the session's one live tracer; every socket must be
reported exactly as the scenario's own sockets and nft counters say.

A crossed open takes about 1.05 s (its SYNs cross on the 1 s SYN re-send), so they run in
parallel: the test takes about 20-25 s here. What it guards against:
- the tracer losing transitions: the kernel skips the raw tracepoint program for state
  changes made by a softirq that interrupts it in process context (bpf/tcptrace.bpf.c,
  TT_DUAL); a lost SYN_SENT > SYN_RECV > ESTABLISHED made a crossed socket read
  active/aborted, states [CLOSE, SYN_SENT], resolved by its destruction;
- the scenario reporting a one-sided open as crossed, or a retried attempt's records being
  read as this one's (tests/kernel/scenarios.py crossed(), harness.run_scenario).
Concurrency makes one-sided opens more likely (the two SYN timers in different timer-wheel
buckets): those are retried in fresh namespaces, and counted in the failure message.

One thing no tracer can fix is checked for, not excused blindly: on the sandbox VMs this
project runs on, no BPF tracing program at all (raw or perf-event tracepoint, ours or the
minimal WITNESS below) runs for the state changes a softirq makes while it runs on top of
one thread of the VM's own agent (process_api, "tokio-rt-worker"), while the kernel's ftrace
event records them; the kernel counts no recursion miss either. A crossed open caught by it
reads exactly like the issue's flake. So an independent minimal program counts each
socket's SYN_SENT > SYN_RECV; a misreported socket is put down to that blind spot only if
the witness did not see its transition either (the scenario proves the kernel made it), at
most a few per run, and the tracer must be right on every socket the witness saw."""

import ctypes
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from tcptrace_bpf import loader

from .harness import compare, run_scenario

RUNS = 200          # in total: half crossed4, half crossed6
PARALLEL = 25       # namespaces at a time
SETTLE_S = 20.0     # after the last scenario, for the last records to arrive
MAX_BLIND = RUNS // 20  # opens the witness missed too: more means no BPF can see this host

WITNESS = r"""
struct key { u16 sport; u16 dport; };
BPF_HASH(seen, struct key, u64, 65536);
RAW_TRACEPOINT_PROBE(inet_sock_set_state)
{
    struct key k = {};
    u64 zero = 0, *n;
    u16 sport = 0, dport = 0;
    if (ctx->args[1] != 2 || ctx->args[2] != 3)  /* TCP_SYN_SENT > TCP_SYN_RECV */
        return 0;
    bpf_probe_read_kernel(&sport, 2, (char *)ctx->args[0] + OFF_INET_SPORT);
    bpf_probe_read_kernel(&dport, 2, (char *)ctx->args[0] + OFF_SKC_DPORT);
    k.sport = __builtin_bswap16(sport);
    k.dport = __builtin_bswap16(dport);
    n = seen.lookup_or_try_init(&k, &zero);
    if (n)
        __sync_fetch_and_add(n, 1);
    return 0;
}
"""


@pytest.fixture
def witness():
    """A minimal BPF program on the same tracepoint: how many SYN_SENT > SYN_RECV changes
    of each (local port, peer port) any BPF program could see."""
    bcc = loader.import_bcc()
    loader.kernel_headers()
    offsets, _ = loader.offset_cflags()
    prog = bcc.BPF(text=WITNESS.encode(), cflags=["-w", *offsets])
    yield lambda sport, dport: prog["seen"].get(prog["seen"].Key(sport, dport), ctypes.c_uint64(0)).value
    prog.cleanup()


def test_every_crossed_open_is_reported_right(tracer, witness):
    names = ["crossed4", "crossed6"] * (RUNS // 2)
    t0 = time.monotonic()
    with ThreadPoolExecutor(PARALLEL) as pool:
        results = list(pool.map(run_scenario, names))
    ran_s = time.monotonic() - t0
    want = {sc["netns"]: sc for sc in results}
    assert len(want) == RUNS, "two scenarios reported the same namespace"

    def got_by_netns() -> dict[int, list[dict]]:
        got: dict[int, list[dict]] = {}
        for rec in list(tracer.records):
            sc = want.get(rec.get("netns"))
            if sc and rec["ts"] >= sc["since"]:  # not an older namespace's, of the same inode
                got.setdefault(rec["netns"], []).append(rec)
        return got

    deadline = time.monotonic() + SETTLE_S
    while time.monotonic() < deadline:
        got = got_by_netns()
        if all(len(got.get(ns, [])) >= len(sc["expect"]) for ns, sc in want.items()):
            break
        time.sleep(0.2)
    time.sleep(0.3)  # anything extra arrives too, and fails the test
    got = got_by_netns()

    problems, blind = [], []
    for ns, sc in want.items():
        found = compare(sc["expect"], got.get(ns, []))
        if not found:
            continue
        unseen = [e for e in sc["expect"] if not witness(e["sport"], e["dport"])]
        where = f"{sc['scenario']} netns {ns}"
        if unseen and len(got.get(ns, [])) == len(sc["expect"]):
            blind.append(f"{where}: no BPF program saw SYN_SENT > SYN_RECV of "
                         f"{[e['sport'] for e in unseen]}: {found}")
        else:
            problems += [f"{where}: {p}" for p in found]
    attempts = Counter(sc["attempts"] for sc in results)
    summary = (f"attempts per open: {dict(attempts)}; scenarios took {ran_s:.1f} s; "
               f"{len(blind)} opens unseen by any BPF program")
    assert not problems, (
        f"{len({p.split(':')[0] for p in problems})} of {RUNS} crossed opens misreported "
        f"({summary}):\n" + "\n".join(problems[:40]))
    assert len(blind) <= MAX_BLIND, f"{summary}:\n" + "\n".join(blind)
    if blind:
        print(summary, *blind, sep="\n")
