"""The compiled `--json` consumer (tcptrace_bpf/_fastpath.c) says, byte for byte, what
tracker.Classifier + sinks/jsonl.render say: for every recorded scenario under every filter,
for damaged and odd records, through the ring-buffer walk and through `replay --json`.
Built by setup.py (`pip install -e .`); under CI=true a missing module fails these tests."""

import json
import os
import random
import struct
import subprocess

import pytest

from tcptrace_bpf import fastpath, recording, wire
from tcptrace_bpf.model import OpenPath, Outcome, TcpState
from tcptrace_bpf.ringbuf import RingReader
from tcptrace_bpf.sinks import jsonl
from tcptrace_bpf.tracker import Classifier, Match
from tests import fixtures
from tests.background import ROOT, TOOL
from tests.conftest import require
from tests.test_recording import write

OFF = wire.field_offsets()
# ts = ts_ns / 1e9 + epoch: 0.0078125 + 0 is a tie at 6 decimals (rounds half-even), 1e13
# takes printf's path, -3.5 gives negative stamps
EPOCHS = (0.0, 1764725812.123456789, 0.0078125, 1e13, -3.5)


@pytest.fixture(autouse=True)
def built():
    require(fastpath._fastpath is not None,
            "tcptrace_bpf._fastpath is not built (pip install -e . builds it; needs python3-dev)")


def python_lines(raws, match, epoch):
    t = Classifier(epoch, match)
    lines = "".join(jsonl.render(item) + "\n" for raw in raws for item in t.feed_bytes(raw))
    return lines, t.counts, t.lost


def c_lines(raws, match, epoch, batch=False):
    """The fast path as sessions drive it, one record per call (exact order) or all at once."""
    t, out = Classifier(epoch, match), []
    fast = fastpath.Batches(t, lambda b: out.append(b.decode("ascii")),
                            lambda item: out.append(jsonl.render(item) + "\n"))
    for chunk in ([b"".join(raws)] if batch else raws):
        # as a live session: records that do not decode go back too
        assert fast.render(chunk, stop_on_bad=False)[0] == len(chunk) // wire.RECORD_SIZE
    return "".join(out), t.counts, t.lost


def matches_for(raws) -> dict[str, Match]:
    """Every filter, with values taken from the scenario so that they keep something."""
    opens = [wire.decode(r) for r in raws]
    first = opens[0]
    pid = next((o.pid for o in opens if o.pid), 1)
    cgroup = next((o.cgroup_id for o in opens if o.cgroup_id), 1)
    return {"none": Match(), "port": Match(port=first.dport), "sport": Match(port=first.sport),
            "family4": Match(family=4), "family6": Match(family=6), "pid": Match(pid=pid),
            "netns": Match(netns=first.netns), "cgroup": Match(cgroup=cgroup),
            "failed": Match(failed=True), "slow": Match(slow=0.0001),
            "failed_slow": Match(failed=True, slow=0.0001), "slow0": Match(slow=0.0),
            "pid_failed": Match(pid=pid, failed=True), "port_family": Match(port=1, family=4)}


def test_names_are_models():
    fp = fastpath._fastpath
    assert fp.STATE_NAMES[1:] == tuple(s.name for s in TcpState)
    assert [TcpState(i).name for i in range(1, len(fp.STATE_NAMES))] == list(fp.STATE_NAMES[1:])
    assert fp.PATHS == tuple(p.value for p in OpenPath)
    assert fp.OUTCOMES == tuple(o.value for o in Outcome)
    assert fp.FLAG_LISTS == tuple(json.dumps(list(wire.open_flag_names(b)), separators=(",", ":"))
                                  for b in range(4))
    assert (fp.RECORD_SIZE, fp.WIRE_VERSION) == (wire.RECORD_SIZE, wire.WIRE_VERSION)


@pytest.mark.parametrize("name", fixtures.names())
def test_every_scenario_under_every_filter(name):
    raws = fixtures.load(name)["raw"]
    for label, match in matches_for(raws).items():
        for epoch in EPOCHS:
            want = python_lines(raws, match, epoch)
            assert c_lines(raws, match, epoch) == want, (label, epoch)
            lines, counts, lost = c_lines(raws, match, epoch, batch=True)
            # all at once: the C lines come first, then those of the records given back
            assert (sorted(lines.splitlines()), counts, lost) == \
                (sorted(want[0].splitlines()), want[1], want[2]), (label, epoch)


def test_passive_opens_go_back_while_requests_are_pending():
    raws = fixtures.load("synack_loss")["raw"]  # SYN-ACK re-sends, then an active timeout
    passive = next(r for r in fixtures.load("normal4")["raw"] if wire.decode(r).states[0] == 10)
    reqs = [r for r in raws if wire.decode(r).kind == wire.KIND_REQ_SYNACK_RTX]
    render = fastpath.Batches(Classifier(0.0), None, None).renderer.render
    lines, back, counts, done, _ = render(b"".join(raws + [passive]), False)
    assert back == reqs + [passive]  # the tracker holds requests from the first re-send on
    assert (lines.count(b"\n"), sum(counts), done) == (1, 1, len(raws) + 1)
    assert render(passive, True)[1] == [passive]
    assert render(passive, False)[1] == []


COMMS = [b"", b"curl", b'a"b\\c\n\r\t\x08\x0c\x01\x1f\x7f', "é✓😀".encode(),
         b"\x80", b"\xc0\xaf", b"\xc2", b"\xe0\x80\x80", b"\xe0\xa0", b"\xed\xa0\x80",
         b"\xef\xbf\xbd", b"\xf0\x8f\xbf\xbf", b"\xf0\x9f\x98", b"\xf4\x90\x80\x80", b"\xf5x",
         b"\xff\xfe", b"ab\xe2\x82", b"\xf0\x9f\x98\x80\xf0", b"x" * 16, b"a\0b"]


def odd_records(n: int, seed: int) -> list[bytes]:
    """Real records with fields changed at random: every path, outcome and null, comms of
    awkward bytes, addresses of both families, durations short and long."""
    rng = random.Random(seed)
    base = [r for name in fixtures.names() for r in fixtures.load(name)["raw"]
            if wire.decode(r).kind == wire.KIND_OPEN]
    seqs = [(7, 2, 1), (7, 2, 7), (10, 3, 1), (10, 3, 7), (10, 3, 4), (7, 2, 3, 1), (7, 2, 3, 7),
            (7, 2), (7, 7), (10, 3), (2, 1), (7, 2, 3, 4, 5, 6, 7, 13), (), (10,), (7, 2, 0)]
    out = []
    for _ in range(n):
        b = bytearray(rng.choice(base))
        st = rng.choice(seqs)
        b[OFF["nstates"]] = len(st)
        b[OFF["states"]:OFF["states"] + 8] = bytes(st).ljust(8, b"\0")
        b[OFF["sk_err"]] = rng.choice((0, 0, 104, 110, 111, 113, 101, 99))
        b[OFF["flags"]] = rng.randrange(64)
        b[OFF["open_flags"]] = rng.randrange(4)
        b[OFF["syn_retrans"]] = rng.choice((0, 0, 1, 6))
        b[OFF["synack_retrans"]] = rng.choice((0, 0, 2))
        struct.pack_into("<I", b, OFF["passive_us"], rng.choice((0, 35, 1, 4294967295)))
        struct.pack_into("<I", b, OFF["pid"], rng.choice((0, 1, 4294967295)))
        struct.pack_into("<Q", b, OFF["cgroup_id"], rng.choice((0, 1, 2**64 - 1)))
        ts = rng.choice((0, 1, 500, 10**9, 5544796426123, 2**63 + 12345, 2**64 - 1))
        start = rng.choice((0, 1, ts, max(ts - rng.randrange(10**10), 1), min(ts + 1000, 2**64 - 1),
                            max(ts - 5 * 10**15, 1)))
        struct.pack_into("<QQ", b, OFF["ts_ns"], ts, start)
        for f in ("sport", "dport"):
            struct.pack_into("<H", b, OFF[f], rng.choice((0, 80, 65535, 443)))
        family = rng.choice((2, 10))
        struct.pack_into("<H", b, OFF["family"], family)
        addr = rng.choice((bytes(16), bytes(10) + b"\xff\xff\x7f\0\0\1",
                           bytes(rng.randrange(256) for _ in range(16))))
        b[OFF["saddr"]:OFF["saddr"] + 16] = addr
        b[OFF["daddr"]:OFF["daddr"] + 16] = rng.choice((addr, bytes(16)))
        comm = rng.choice(COMMS) if rng.random() < 0.7 else bytes(
            rng.randrange(256) for _ in range(rng.randrange(17)))
        b[OFF["comm"]:OFF["comm"] + 16] = comm[:16].ljust(16, b"\0")
        out.append(bytes(b))
    return out


@pytest.mark.parametrize("seed", range(len(EPOCHS)))
def test_odd_records(seed):
    raws = odd_records(1500, seed)
    for label, match in matches_for(raws).items():
        epoch = EPOCHS[seed % len(EPOCHS)]
        assert c_lines(raws, match, epoch) == python_lines(raws, match, epoch), label


def test_records_that_do_not_decode_go_back():
    good = fixtures.load("normal4")["raw"][0]
    bad = []
    for field, value in (("kind", 9), ("family", 7), ("nstates", 9)):
        b = bytearray(good)
        b[OFF[field]] = value
        bad.append(bytes(b))
    raws = [good, *bad, good]
    assert c_lines(raws, Match(), 0.0) == python_lines(raws, Match(), 0.0)
    t = Classifier(0.0)
    # replay's mode: stop at the first, say where
    assert fastpath.Batches(t, lambda b: None, None).render(b"".join(raws))[0] == 1


def fake_ring(records, size=4096, start=4000):
    """A ring as the kernel lays it out, its data area mapped twice, starting near its end so
    that a record wraps: returns (consumer page, producer page + data, page, mask)."""
    page, mask = 4096, size - 1
    data, pos = bytearray(size), start
    for raw, bits in records:
        for i, byte in enumerate(struct.pack("<II", len(raw) | bits, 0) + raw):
            data[(pos + i) & mask] = byte
        pos += (len(raw) + 8 + 7) & ~7
    cons = bytearray(struct.pack("<Q", start).ljust(page, b"\0"))
    prod = struct.pack("<Q", pos).ljust(page, b"\0") + data + data
    return cons, bytearray(prod), page, mask


def test_ring_walk_is_ringreaders():
    raws = [r for n in fixtures.names() for r in fixtures.load(n)["raw"]][:25]
    records = [(r, 0) for r in raws[:10]] + [(raws[10], 1 << 30)] + [(r, 0) for r in raws[11:20]]
    records += [(raws[20], 1 << 31), (raws[21], 0)]  # busy: the walk stops there
    cons, prod, page, mask = fake_ring(records)
    py = RingReader.__new__(RingReader)
    got = []
    py.mask, py.on_record, py.on_batch = mask, got.append, None
    py._cons, py._prod = bytearray(cons), bytes(prod)
    py._data = memoryview(py._prod)[page:]
    assert py.drain() == 19
    t = Classifier(1.7e9)
    lines, back, counts, n, _ = fastpath.Batches(t, None, None).renderer.drain(
        cons, prod, page, mask, False)
    assert n == 19 and cons == py._cons  # the same records taken, consumer_pos the same
    want, _, _ = python_lines(got, Match(), 1.7e9)
    t2, extra = Classifier(1.7e9), []
    for raw in back:
        extra += [jsonl.render(i) + "\n" for i in t2.feed_bytes(raw)]
    assert sorted((lines.decode() + "".join(extra)).splitlines()) == sorted(want.splitlines())


def replay_cli(path, *args, fast=True):
    env = dict(os.environ, TCPTRACE_NO_FASTPATH="0" if fast else "1",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(TOOL + ["replay", str(path), "--json", *args], capture_output=True,
                          env=env, timeout=300)


def test_replay_of_churn_is_identical(tmp_path):
    from bench.collector import build_recording
    path = build_recording(tmp_path / "churn.rec", 20000)
    for args in ((), ("--failed", "--slow", "0.00004")):  # the second keeps the active sides
        fast, slow = replay_cli(path, *args), replay_cli(path, *args, fast=False)
        assert fast.returncode == slow.returncode == 0, fast.stderr
        assert fast.stdout == slow.stdout and fast.stderr == slow.stderr, args
        assert len(fast.stdout.splitlines()) == (40000 if not args else 20000)


def test_replay_of_recorded_scenarios(tmp_path):
    """Every scenario in one recording, pending requests included: the same lines (within
    a batch, in another order: C's first) and the same summary."""
    raws = [r for name in fixtures.names() for r in fixtures.load(name)["raw"]]
    path = write(tmp_path / "all.rec", raws)
    fast, slow = replay_cli(path), replay_cli(path, fast=False)
    assert fast.returncode == slow.returncode == 0, fast.stderr
    assert sorted(fast.stdout.splitlines()) == sorted(slow.stdout.splitlines())
    assert len(fast.stdout.splitlines()) >= len(raws) - 3
    assert fast.stderr == slow.stderr
    old = fixtures.HERE / "recordings" / "wire1-normal4.rec"  # wire version 1: Python's path
    assert replay_cli(old).stdout == replay_cli(old, fast=False).stdout


def test_corrupt_record_after_a_long_run(tmp_path):
    raws = [r for _ in range(300) for r in fixtures.load("normal4")["raw"]]
    bad = bytearray(raws[0])
    bad[OFF["kind"]] = 99
    path = write(tmp_path / "r.rec", raws[:451], trailer=False)
    with open(path, "ab") as f:
        f.write(recording.FRAME.pack(recording.FRAME_RECORD, len(bad)) + bad)
        for raw in raws[:100]:
            f.write(recording.FRAME.pack(recording.FRAME_RECORD, len(raw)) + raw)
    fast, slow = replay_cli(path), replay_cli(path, fast=False)
    assert fast.returncode == slow.returncode == 3
    assert fast.stdout == slow.stdout and len(fast.stdout.splitlines()) == 451
    assert fast.stderr == slow.stderr
    (line,) = fast.stderr.decode().strip().splitlines()
    assert "corrupt record 452" in line and "unknown record kind 99" in line


def test_used_only_where_it_can_be(monkeypatch):
    t = Classifier(0.0)
    assert isinstance(fastpath.for_sink(jsonl.sink(), t, print), fastpath.Batches)
    from tcptrace_bpf.sinks import text
    assert fastpath.for_sink(text.sink(), t, print) is None  # text stays Python
    assert fastpath.for_sink(jsonl.sink(), Classifier(0.0, Match(pid=-1)), print) is None
    monkeypatch.setenv("TCPTRACE_NO_FASTPATH", "1")
    assert fastpath.for_sink(jsonl.sink(), t, print) is None
