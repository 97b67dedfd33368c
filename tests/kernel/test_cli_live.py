"""The trace command end to end: filters, --events, signals, summary, privileges."""

import json
import shutil
import signal
import socket
import subprocess
import time

import pytest

from tests.conftest import require

from tests.background import ROOT, TOOL

from .conftest import LiveTracer, kernel_ready
from .harness import new_namespace, run_scenario

REQUIRED_KEYS = {"ts", "path", "outcome", "family", "saddr", "sport", "daddr", "dport", "states",
                 "duration_s", "syn_retransmits", "synack_retransmits", "pid", "comm", "netns"}
PORT = 47123


def _connect_pair(port: int) -> None:
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port))
    srv.listen()
    c = socket.create_connection(("127.0.0.1", port))
    a, _ = srv.accept()
    for s in (c, a, srv):
        s.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_filters_events_and_clean_exit_on_signal(sig):
    kernel_ready()
    t = LiveTracer("--attach", "tracepoint", "--port", str(PORT), "--family", "4", "--events")
    _connect_pair(PORT)
    _connect_pair(PORT + 1)  # filtered out by --port
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and sum("path" in r for r in t.records) < 2:
        time.sleep(0.05)
    rc, err = t.stop(sig), t.stderr
    assert rc == 0, err
    opens = [r for r in t.records if "path" in r]
    events = [r for r in t.records if "event" in r]
    assert sorted(r["path"] for r in opens) == ["active", "passive"]
    assert all(REQUIRED_KEYS <= set(r) for r in opens)
    assert all(PORT in (r["sport"], r["dport"]) for r in t.records)
    # the client's state changes, as raw events: CLOSE>SYN_SENT, SYN_SENT>ESTABLISHED, ...
    states = [(e["old_state"], e["new_state"]) for e in events if e["event"] == "state"]
    assert ("SYN_SENT", "ESTABLISHED") in states and ("LISTEN", "SYN_RECV") in states
    assert "tcptrace-bpf summary (backend tracepoint)" in err
    assert "  active       established 1\n" in err and "  passive      established 1\n" in err
    assert "events lost: 0" in err
    assert "Traceback" not in err


def test_duration_ends_the_run():
    kernel_ready()
    out = subprocess.run(TOOL + ["trace", "--attach", "tracepoint", "--duration", "0.5"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "tcptrace-bpf summary" in out.stderr


def test_not_root_is_one_line_exit_1():
    kernel_ready()
    require(shutil.which("setpriv") is not None, "needs setpriv")
    # nobody, with only CAP_DAC_READ_SEARCH: enough to read a checkout in a 0700 home (root's,
    # as in a fresh clone), nothing that tracing needs
    out = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                          "--inh-caps=-all,+dac_read_search", "--ambient-caps=+dac_read_search",
                          *TOOL, "trace"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [
        "tcptrace-bpf: error: missing CAP_BPF, CAP_PERFMON: run as root, or grant "
        "CAP_BPF + CAP_PERFMON (README: Privileges)"]


def test_summary_json_reports_backend_trials_and_the_scenarios_opens(tmp_path):
    """`trace --duration N --summary-json FILE` while a scenario runs in its own namespace
    (--netns keeps the counts exact on a busy host)."""
    kernel_ready()
    ns = new_namespace()
    out = tmp_path / "summary.json"
    t = LiveTracer("--attach", "auto", "--netns", f"/run/netns/{ns}", "--duration", "8",
                   "--summary-json", str(out))
    run_scenario("normal4", ns)
    t.proc.wait(timeout=60)
    assert t.stop() == 0, t.stderr  # exited already: stop() only waits for the last lines
    doc = json.loads(out.read_text())
    assert doc["backend"] == t.backend
    tried = doc["backends_tried"]
    assert list(tried)[-1] == doc["backend"] and tried[doc["backend"]] == "loaded"
    assert list(tried) == ["fentry", "kprobe", "tracepoint"][:len(tried)]
    assert all(why and why != "loaded" for b, why in tried.items() if b != doc["backend"])
    for b, why in tried.items():  # the announce line says the same, from the same trials
        assert f"{b}: {why}" in t.announce
    assert doc["opens"]["active"]["established"] == 1
    assert doc["opens"]["passive"]["established"] == 1
    assert doc["opens_total"] == 2 and len(t.records) == 2
    # losses are host-wide (other tests' traffic crosses the ring too): consistent, not zero
    assert set(doc["lost"]) >= set(doc["kernel_lost"])
    assert doc["lost_total"] == sum(doc["lost"].values())
    assert doc["tracked_at_exit"] >= 0 and doc["records_written"] is None
    assert "tcptrace-bpf summary (backend " in t.stderr  # the text summary as well
