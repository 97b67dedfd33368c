"""RunSummary: the one run result, as --summary-json gives it and as the text summary shows
it; LossReason against the kernel's stat order and the exported label values."""

import json
import subprocess

from tcptrace_bpf import wire
from tcptrace_bpf.model import OpenPath, Outcome
from tcptrace_bpf.replay import replay
from tcptrace_bpf.sinks import Discard, prometheus, text
from tcptrace_bpf.summary import KERNEL_REASONS, LossReason
from tcptrace_bpf.tracker import Match
from tests import fixtures
from tests.test_recording import RECORDINGS, write
from tests.background import TOOL

ALL_REASONS = ["ringbuf_full", "table_full", "stale_entry", "unknown_transition", "missed_state_change",
               "listen_drop_inferred", "listener_table_full", "listen_port_full", "listen_unclosed",
               "half_open_expired", "decode_error", "request_evicted"]


def test_loss_reasons_are_the_kernel_stats_then_the_collectors():
    assert [r.value for r in LossReason] == ALL_REASONS
    assert tuple(r.value for r in LossReason)[:len(wire.STAT_NAMES)] == wire.STAT_NAMES
    assert prometheus.LOST_REASONS == tuple(ALL_REASONS)  # the exported label values
    assert [r.value for r in KERNEL_REASONS] == [*wire.STAT_NAMES, "half_open_expired"]


def test_to_dict_of_a_replayed_real_kernel_recording():
    summary = replay(str(RECORDINGS / "wire1-normal4.rec"), Match(), Discard())
    doc = summary.to_dict()
    assert set(doc) == {"backend", "backends_tried", "opens", "opens_total", "opens_shown",
                        "opens_not_shown", "records_read", "lost", "lost_total",
                        "kernel_lost", "pending_requests", "tracked_at_exit", "records_written"}
    assert doc["backend"] == "tracepoint" and doc["backends_tried"] == {}
    assert list(doc["opens"]) == [p.value for p in OpenPath]
    for path, by_outcome in doc["opens"].items():
        assert list(by_outcome) == [o.value for o in Outcome]
        want = 1 if path in ("active", "passive") else 0
        assert by_outcome == {o.value: want if o is Outcome.ESTABLISHED else 0 for o in Outcome}
    assert doc["opens_total"] == doc["opens_shown"] == 2 and doc["opens_not_shown"] == 0
    assert doc["records_read"] is None  # a replay reads no ring buffer
    assert doc["lost"] == dict.fromkeys(ALL_REASONS, 0) and doc["lost_total"] == 0
    assert doc["kernel_lost"] == dict.fromkeys([*wire.STAT_NAMES, "half_open_expired"], 0)
    assert doc["pending_requests"] == 0
    assert doc["tracked_at_exit"] is None and doc["records_written"] is None
    assert json.loads(json.dumps(doc)) == doc


def test_text_summary_of_a_replay():
    summary = replay(str(RECORDINGS / "wire1-normal4.rec"), Match(port=1), Discard())
    assert text.summary(summary).splitlines() == [
        "tcptrace-bpf summary (backend tracepoint (replay of 2 records from kernel 6.18.44-fc-v669))",
        "  no connection opens seen",
        "  events lost: 0 (ringbuf_full=0, stale_entry=0, table_full=0)",
        "  unresolved requests: 0"]


def test_cli_replay_summary_json_to_a_file_and_to_stderr(tmp_path):
    rec = write(tmp_path / "r.rec", fixtures.load("refused")["raw"])
    out_file = tmp_path / "summary.json"
    out = subprocess.run(TOOL + ["replay", str(rec), "--json", "--summary-json", str(out_file)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out_file.read_text())
    assert doc["opens"]["active"]["refused"] == 1 and doc["opens_total"] == 1
    assert sum(n for by in doc["opens"].values() for n in by.values()) == 1
    assert doc["lost"]["ringbuf_full"] == 2 and doc["lost_total"] == 2
    assert doc["kernel_lost"]["ringbuf_full"] == 2 and doc["backend"] == "tracepoint"
    assert "active       refused     1" in out.stderr  # the text summary is still there

    out = subprocess.run(TOOL + ["replay", str(rec), "--summary-json", "-"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stderr.splitlines()[-1]) == doc


def test_summary_json_to_a_path_that_cannot_be_written_is_one_line_exit_2(tmp_path):
    rec = write(tmp_path / "r.rec", fixtures.load("refused")["raw"])
    out = subprocess.run(TOOL + ["replay", str(rec), "--summary-json", str(tmp_path / "no" / "x")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tcptrace-bpf: error: ")
    assert "--summary-json" in lines[0] and "cannot write" in lines[0]
    assert out.stdout == ""
