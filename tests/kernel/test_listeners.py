"""The listener side against the kernel's own counters: each scenario runs in a namespace of
its own, and what the tool reports for it (trace's listener lines, the `listeners` table,
the exporter's series) must equal that namespace's MIB deltas (/proc/net/netstat read inside
it) and each listener's own figures as ss reads them (inet_diag), exactly."""

import json
import subprocess
import time

import pytest

from tests.background import TOOL, Background, free_port
from tests.prometheus_server import http_get

from .conftest import START_TIMEOUT, kernel_ready
from .harness import compare, new_namespace, run_scenario, SCENARIOS as SCENARIO_FILE

REASONS = ("accept_queue_full", "syn_queue_full", "other")
LISTENER_SCENARIOS = ["acceptq_syn", "acceptq_ack", "acceptq_ack_abort", "synq_full",
                      "cookies_always", "cookies_overflow", "fastopen", "dualstack",
                      "multi_listener"]
FLAGGED = ("fastopen", "cookies_always", "cookies_overflow")  # expect both sides' opens


def oracle(mib: dict) -> dict:
    """What the namespace's MIB says the tool must report, summed over its listeners. Every
    ListenDrops is one of: ListenOverflows (accept queue full, at SYN or at ACK time),
    TCPReqQFullDrop (SYN queue full without cookies), or another reason."""
    get_ = lambda k: mib.get(k, 0)  # noqa: E731
    return {"accept_queue_full": get_("ListenOverflows"),
            "syn_queue_full": get_("TCPReqQFullDrop"),
            "other": get_("ListenDrops") - get_("ListenOverflows") - get_("TCPReqQFullDrop"),
            "syncookies_sent": get_("SyncookiesSent")}


def totals(lines: list[dict]) -> dict:
    out = dict.fromkeys([*REASONS, "syncookies_sent"], 0)
    for line in lines:
        for r in REASONS:
            out[r] += line["drops"][r]
        out["syncookies_sent"] += line["syncookies_sent"]
    return out


def listener_lines(tracer, sc: dict, want: dict, port=None, timeout: float = 6.0) -> list[dict]:
    """The scenario's listener lines (its namespace, its process), once they add up to
    `want` (or the timeout passed), and one interval more: nothing extra may follow."""
    def mine():
        return [r for r in tracer.listeners if r["netns"] == sc["netns"]
                and r["pid"] == sc["pid"] and (port is None or r["port"] == port)]
    end = time.monotonic() + timeout
    while time.monotonic() < end and totals(mine()) != want:
        time.sleep(0.1)
    time.sleep(1.2)
    return mine()


@pytest.mark.parametrize("name", LISTENER_SCENARIOS)
def test_listener_lines_equal_the_namespace_mib(tracer, name):
    sc = run_scenario(name)
    want = oracle(sc["mib"])
    lines = listener_lines(tracer, sc, want)
    # on a mismatch, also the namespace's lines of any pid: a listener whose owner was not
    # recorded (its CLOSE > LISTEN missed) reports under pid 0
    assert totals(lines) == want, (sc["mib"], lines, "namespace, any pid:",
                                   [r for r in tracer.listeners if r["netns"] == sc["netns"]])
    for line in lines:
        assert line["type"] == "listener" and line["interval_s"] >= 0
        assert any(line["drops"].values()) or line["syncookies_sent"] or line["synack_retransmits"]
    if name in FLAGGED:  # every open of these, with its flags (the kernel's word: TCP_INFO, MIB)
        got = tracer.wait_for(sc["netns"], len(sc["expect"]), timeout=10, pid=sc["pid"])
        problems = compare(sc["expect"], got)
        assert not problems, "\n".join(problems)


def test_every_listener_apart(tracer):
    """Three listeners in one namespace, each with trouble of its own kind: the tool's
    figures per listener are its own sk_drops (inet_diag; every drop here is at SYN time,
    one sk_drops each) and nothing of the others'."""
    sc = run_scenario("multi_listener")
    assert len(sc["listeners"]) == 3
    for lst in sc["listeners"]:
        ss = lst["ss"]
        lines = listener_lines(tracer, sc, {}, port=lst["port"], timeout=0)
        got = totals(lines)
        assert sum(got[r] for r in REASONS) == ss["sk_drops"], (lst, lines)
        for line in lines:
            assert (line["family"], line["addr"]) == (lst["family"], lst["addr"])
    by_label = {lst["label"]: lst["port"] for lst in sc["listeners"]}
    a = totals(listener_lines(tracer, sc, {}, port=by_label["A"], timeout=0))
    b = totals(listener_lines(tracer, sc, {}, port=by_label["B"], timeout=0))
    assert a["syn_queue_full"] == 0 and a["accept_queue_full"] > 0
    assert b["accept_queue_full"] == 0 and b["syn_queue_full"] > 0


class _Table(Background):
    """`tcptrace-bpf listeners --json`: one JSON document after --interval."""

    def __init__(self, interval: float):
        self.doc = None
        super().__init__(TOOL + ["listeners", "--json", "--interval", str(interval)],
                         "table in")
        self.wait_started(START_TIMEOUT)

    def on_stdout(self, line: str) -> None:
        self.doc = json.loads(line)


def test_listeners_table_json_is_ss_and_the_mib():
    """Listeners held open: their queues now and limits are what ss reads in the
    namespace; drops by reason are the MIB's."""
    kernel_ready()
    table = _Table(interval=10)
    ns = new_namespace()
    proc = subprocess.Popen(["ip", "netns", "exec", ns, "python3", str(SCENARIO_FILE),
                             "multi_listener"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env={**__import__("os").environ, "TCPTRACE_HOLD": "1",
                                            "TCPTRACE_TEST_CGROUP": "0"})
    try:
        sc = json.loads(proc.stdout.readline())
        end = time.monotonic() + 20
        while table.doc is None and time.monotonic() < end:
            time.sleep(0.1)
        assert table.doc is not None, table.stderr
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
        table.stop()
    rows = [r for r in table.doc["listeners"] if r["netns"] == sc["netns"]]
    assert len(rows) == len(sc["listeners"]) == 3
    for lst in sc["listeners"]:
        row = next(r for r in rows if r["port"] == lst["port"])
        ss = lst["ss"]
        assert (row["accept_queue"], row["accept_queue_max"]) == (ss["accept_queue"], ss["accept_queue_max"])
        assert row["syn_queue"] == 0  # the requests expired before the scenario printed
        assert sum(row["drops"].values()) == ss["sk_drops"]
        assert row["source"] == "kernel" and row["pid"] == sc["pid"]
    got = {r: sum(row["drops"][r] for row in rows) for r in REASONS}
    want = oracle(sc["mib"])
    assert got == {r: want[r] for r in REASONS}
    # worst first: the rows of this namespace come in order of their drops
    drops = [sum(r["drops"].values()) for r in rows]
    assert drops == sorted(drops, reverse=True)


def test_exporter_series_equal_the_mib():
    """The exporter's per-port series after the same scenarios: every listener here has a
    port of its own, so each port's series are that namespace's MIB deltas."""
    kernel_ready()
    port = free_port()
    exporter = Background(TOOL + ["export", "--listen", f"127.0.0.1:{port}"],
                          "serving http")
    exporter.wait_started(START_TIMEOUT)
    try:
        runs = [run_scenario(name) for name in ("acceptq_syn", "synq_full", "cookies_always",
                                                "acceptq_ack")]
        time.sleep(1.5)
        text = http_get(f"http://127.0.0.1:{port}/metrics")
    finally:
        exporter.stop()
    series, lost = {}, {}
    for line in text.splitlines():
        if line.startswith(("tcptrace_listen_drops_total{", "tcptrace_syncookies_sent_total{")):
            name, value = line.rsplit(" ", 1)
            series[name] = float(value)
        elif line.startswith("tcptrace_events_lost_total{") and not line.endswith(" 0.0"):
            lost[line.rsplit(" ", 1)[0]] = line.rsplit(" ", 1)[1]  # a miss says how it was counted
    for sc in runs:
        (lst,) = sc["listeners"]
        want = oracle(sc["mib"])
        for reason in REASONS:
            key = f'tcptrace_listen_drops_total{{port="{lst["port"]}",reason="{reason}"}}'
            assert series.get(key, 0) == want[reason], (sc["scenario"], key, lost)
        key = f'tcptrace_syncookies_sent_total{{port="{lst["port"]}"}}'
        assert series.get(key, 0) == want["syncookies_sent"], (sc["scenario"], key, lost)


def test_record_then_replay_gives_the_listener_lines(tmp_path):
    """`record` keeps the listener table each interval; `replay --json` makes trace's
    listener lines of it, with the same totals as the namespace's MIB."""
    kernel_ready()
    rec = tmp_path / "listeners.rec"
    recorder = Background(TOOL + ["record", str(rec)], "recording to")
    recorder.wait_started(START_TIMEOUT)
    try:
        sc = run_scenario("synq_full")
        time.sleep(1.5)
    finally:
        recorder.stop()
    out = subprocess.run(TOOL + ["replay", "--json", str(rec)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    lines = [json.loads(x) for x in out.stdout.splitlines()]
    mine = [x for x in lines if x["type"] == "listener" and x["netns"] == sc["netns"]
            and x["pid"] == sc["pid"]]
    assert totals(mine) == oracle(sc["mib"]) and mine
    assert {x["type"] for x in lines} <= {"open", "listener"}
