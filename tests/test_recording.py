"""Recordings: round trip through replay, an older wire version still read, and every kind
of damage refused with one line, exit 3, and where in the file."""

import json
import socket
import struct
import subprocess
from pathlib import Path

import pytest

from tcptrace_bpf import recording, wire
from tcptrace_bpf.replay import replay
from tcptrace_bpf.sinks import Discard
from tcptrace_bpf.tracker import Match, Classifier
from tests import fixtures
from tests.background import TOOL

RECORDINGS = fixtures.HERE / "recordings"


def write(path: Path, raws, header=None, trailer=True) -> Path:
    header = header or recording.Header(kernel="6.18.44-fc-v669", backend="tracepoint",
                                        epoch_offset=1.7e9)
    with open(path, "wb") as f:
        w = recording.Writer(f, header)
        for raw in raws:
            w.write(raw)
        if trailer:
            last = max(wire.decode(r).ts_ns for r in raws)
            w.close(recording.Trailer(ended_ns=last + 60 * 10**9, lost={"ringbuf_full": 2}))
    return path


class Collect(Discard):
    """A sink that keeps what it is given."""

    def __init__(self):
        self.items = []
        self.emit = self.items.append


def run(*args):
    return subprocess.run(TOOL + list(args), capture_output=True, text=True, timeout=60)


def one_line_exit_3(out, *words):
    assert out.returncode == 3, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tcptrace-bpf: error: "), out.stderr
    for w in words:
        assert w in lines[0]
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("name", fixtures.names())
def test_replay_gives_what_the_tracker_gives_live(tmp_path, name):
    doc = fixtures.load(name)
    path = write(tmp_path / "r.rec", doc["raw"])
    sink = Collect()
    summary = replay(str(path), Match(), sink)
    got = sink.items
    live = Classifier(1.7e9)
    want = [o for raw in doc["raw"] for o in live.feed_bytes(raw)]
    want += live.expire(max(wire.decode(r).ts_ns for r in doc["raw"]) + 60 * 10**9)
    assert [o.to_dict() for o in got] == [o.to_dict() for o in want]
    assert len(got) == len(doc["expect"])
    assert summary.lost["ringbuf_full"] == 2  # the recorder's kernel-side losses carry over


def test_cli_replay_json_and_summary(tmp_path):
    path = write(tmp_path / "r.rec", fixtures.load("refused")["raw"])
    out = run("replay", str(path), "--json")
    assert out.returncode == 0, out.stderr
    rec = json.loads(out.stdout)
    assert (rec["path"], rec["outcome"], rec["cgroup"]) == ("active", "refused", 1)
    assert "active       refused     1" in out.stderr and "ringbuf_full=2" in out.stderr


def test_a_recording_of_wire_version_1_is_still_read():
    """Made by the previous release (112-byte records, no cgroup id), from the real kernel."""
    expect = json.loads((RECORDINGS / "wire1-normal4.expect.json").read_text())["expect"]
    out = run("replay", str(RECORDINGS / "wire1-normal4.rec"), "--json")
    assert out.returncode == 0, out.stderr
    got = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(got) == len(expect) == 2
    for rec, exp in zip(got, expect):
        assert {k: rec[k] for k in exp} == exp
        assert rec["cgroup"] is None


def test_missing_file():
    one_line_exit_3(run("replay", "/nonexistent/x.rec"), "cannot open", "No such file")


def test_not_a_recording(tmp_path):
    p = tmp_path / "x.rec"
    p.write_bytes(b"hello\n" * 10)
    one_line_exit_3(run("replay", str(p)), "not a tcptrace-bpf recording", "byte 0")


@pytest.mark.parametrize("field,value,words", [
    ("format", 2, ["recording format 2", "reads format 1"]),
    ("wire_version", 9, ["wire format version 9", "reads 1, 2"]),
    ("record_size", 100, ["100-byte records"]),
])
def test_header_from_an_unknown_version_is_refused(tmp_path, field, value, words):
    path = write(tmp_path / "r.rec", fixtures.load("refused")["raw"])
    data = path.read_bytes()
    head_end = data.index(b"\n", len(recording.MAGIC)) + 1
    header = json.loads(data[len(recording.MAGIC):head_end])
    header[field] = value
    path.write_bytes(recording.MAGIC + json.dumps(header).encode() + b"\n" + data[head_end:])
    one_line_exit_3(run("replay", str(path)), *words, f"byte {len(recording.MAGIC)}")


def test_truncated_inside_a_record_prints_what_came_before(tmp_path):
    raws = fixtures.load("normal4")["raw"]
    path = write(tmp_path / "r.rec", raws)
    data = path.read_bytes()
    second = data.index(raws[1]) - recording.FRAME.size
    path.write_bytes(data[:second + 50])
    out = run("replay", str(path), "--json")
    one_line_exit_3(out, "truncated inside record 2", f"byte {second}")
    assert len(out.stdout.splitlines()) == 1  # the first open was read and shown


def test_recorder_killed_before_the_end_marker(tmp_path):
    path = write(tmp_path / "r.rec", fixtures.load("normal4")["raw"], trailer=False)
    one_line_exit_3(run("replay", str(path)), "without the end marker", "after 2 records")


def test_corrupt_record_names_its_place(tmp_path):
    raws = list(fixtures.load("normal4")["raw"])
    bad = bytearray(raws[1])
    bad[wire.field_offsets()["kind"]] = 99
    raws[1] = bytes(bad)
    path = write(tmp_path / "r.rec", raws[:1], trailer=False)
    with open(path, "ab") as f:  # the writer would refuse nothing: damage after the fact
        f.write(recording.FRAME.pack(recording.FRAME_RECORD, len(bad)) + bad)
        f.write(recording.FRAME.pack(recording.FRAME_TRAILER, 13) + b'{"ended_ns":1}')
    at = path.read_bytes().index(bytes(bad)) - recording.FRAME.size
    one_line_exit_3(run("replay", str(path)), "corrupt record 2", "unknown record kind 99",
                    f"byte {at}")


def test_unknown_frame_type(tmp_path):
    path = write(tmp_path / "r.rec", fixtures.load("refused")["raw"], trailer=False)
    with open(path, "ab") as f:
        f.write(struct.pack("<HH", 7, 3) + b"abc")
    one_line_exit_3(run("replay", str(path)), "unknown frame type 7", "after 1 records")


def test_replay_listen_on_a_port_in_use_is_exit_1(tmp_path):
    path = write(tmp_path / "r.rec", fixtures.load("refused")["raw"])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        out = run("replay", str(path), "--listen", f"127.0.0.1:{s.getsockname()[1]}")
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1].endswith("Address already in use")
    assert len(out.stderr.strip().splitlines()) == 1
