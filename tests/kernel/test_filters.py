"""Issue 13: every filter decided in the kernel, checked both ways on the same handshakes.

One `record` (no filter) and one `trace --json` per filter run side by side while two
processes, each in a namespace of its own (one of them in a cgroup of its own), drive real
handshakes (tests/kernel/filter_workload.py). Then `replay --json` applies each filter in
Python (tracker.Match) to the unfiltered recording. For every filter:
  - the lines the kernel-filtered trace printed equal the lines the Python filter keeps
    (every key but ts, and duration_s within 5 ms: each tracer has its own clock);
  - only what the kernel kept crossed the ring buffer: the trace's records_read equals its
    open lines, and its in-kernel counts (the summary) equal them too;
  - the filter kept something and left something out (the test can fail both ways).
`--port 1` (nothing uses it) shows nothing and reads no record at all."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.background import TOOL, Background
from tests.kernel.conftest import START_TIMEOUT, LiveTracer, kernel_ready
from tests.kernel.harness import new_namespace

WORKLOAD = Path(__file__).with_name("filter_workload.py")
PORT = 40123  # the workload's IPv4 listener, in both namespaces


def _cgroup2_mount() -> str:
    return next(line.split()[4] for line in open("/proc/self/mountinfo")
                if line.split(" - ")[1].startswith("cgroup2 "))


class Workload:
    def __init__(self, ns: str):
        self.ns = ns
        self.netns = os.stat(f"/run/netns/{ns}").st_ino
        self.proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, str(WORKLOAD),
                                      str(PORT)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)
        self.pid = json.loads(self.proc.stdout.readline())["pid"]

    def go(self) -> dict:
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        ports = json.loads(self.proc.stdout.readline())
        assert self.proc.wait(30) == 0
        return ports


FILTERS = {
    "port": lambda a, b, cg: ["--port", str(PORT)],
    "family": lambda a, b, cg: ["--family", "6"],
    "pid": lambda a, b, cg: ["--pid", str(a.pid)],
    "netns": lambda a, b, cg: ["--netns", f"/run/netns/{b.ns}"],
    "cgroup": lambda a, b, cg: ["--cgroup", cg],
    "failed": lambda a, b, cg: ["--failed"],
    "slow": lambda a, b, cg: ["--slow", "0.5"],
    "failed_or_slow": lambda a, b, cg: ["--failed", "--slow", "0.5"],
    "unused_port": lambda a, b, cg: ["--port", "1"],
}


def _opens(lines: list[dict], netns: set[int]) -> list[tuple[str, float | None]]:
    """The workload's opens, sorted: each as its JSON without ts and duration_s, and that
    duration. Every tracer reads its own clock (its epoch offset, and the moments its own
    programs ran, microseconds apart), so those two are compared apart (_same)."""
    return sorted((json.dumps({k: v for k, v in r.items() if k not in ("ts", "duration_s")},
                              sort_keys=True), r["duration_s"])
                  for r in lines if r.get("type") == "open" and r["netns"] in netns)


def _same(kernel: list, python: list) -> bool:
    return ([k for k, _ in kernel] == [k for k, _ in python]
            and all((a is None) == (b is None) and (a is None or abs(a - b) < 0.005)
                    for (_, a), (_, b) in zip(kernel, python)))


@pytest.fixture
def cgroup_dir():
    path = Path(_cgroup2_mount()) / f"tcptrace-filter-test-{os.getpid()}"
    path.mkdir()
    yield path
    for pid in (path / "cgroup.procs").read_text().split():
        (path.parent / "cgroup.procs").write_text(pid)
    path.rmdir()


def test_every_filter_in_kernel_equals_python(tmp_path, cgroup_dir):
    kernel_ready()
    a, b = Workload(new_namespace()), Workload(new_namespace())
    (cgroup_dir / "cgroup.procs").write_text(str(a.pid))
    rec_file = tmp_path / "all.rec"
    recorder = Background(TOOL + ["record", str(rec_file), "--attach", "tracepoint"],
                          "Ctrl-C to stop")
    tracers = {}
    try:
        for name, args in FILTERS.items():
            tracers[name] = LiveTracer("--attach", "tracepoint", "--summary-json",
                                       str(tmp_path / f"{name}.json"),
                                       *args(a, b, str(cgroup_dir)))
        recorder.wait_started(START_TIMEOUT)
        a.go(), b.go()
    finally:
        for t in tracers.values():
            t.stop()
        recorder.stop()
    assert recorder.proc.returncode == 0, recorder.stderr
    ours = {a.netns, b.netns}

    everything = json.loads(subprocess.run(
        TOOL + ["replay", str(rec_file), "--json"], capture_output=True, text=True,
        check=True).stdout.replace("\n", ",").rstrip(",").join("[]"))
    all_opens = _opens(everything, ours)
    # v4 3 + v6 2 established (2 opens each), 3 refused, 1 slow (2 opens), per namespace
    assert len(all_opens) == 2 * (2 * 5 + 3 + 2), (
        sorted((json.loads(k)["saddr"], json.loads(k)["sport"], json.loads(k)["dport"],
                json.loads(k)["path"], json.loads(k)["netns"]) for k, _ in all_opens),
        recorder.stderr[-1500:])

    for name, args in FILTERS.items():
        t = tracers[name]
        assert t.proc.returncode == 0, t.stderr
        out = subprocess.run(TOOL + ["replay", str(rec_file), "--json",
                                     *args(a, b, str(cgroup_dir))],
                             capture_output=True, text=True, check=True).stdout
        python = _opens([json.loads(line) for line in out.splitlines()], ours)
        kernel = _opens(t.records, ours)
        assert _same(kernel, python), f"--{name}: kernel and Python filters differ: {kernel} {python}"
        if name == "unused_port":
            assert kernel == []
        else:
            assert 0 < len(kernel) < len(all_opens), f"--{name} kept {len(kernel)}"
        summary = json.loads((tmp_path / f"{name}.json").read_text())
        shown = sum(1 for r in t.records if r.get("type") == "open")
        # only what the kernel kept crossed the ring buffer, and it counted exactly that
        assert summary["records_read"] == shown, (name, summary)
        assert summary["opens_total"] == summary["opens_shown"] == shown, (name, summary)
