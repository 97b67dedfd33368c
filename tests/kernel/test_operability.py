"""Issue 4 on the real kernel: check, record and replay, attribution of processes and
namespaces, and the hard edges (signals leave nothing loaded, least privilege, expiry)."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tcptrace_bpf import loader, procfs
from tcptrace_bpf.btf import BTF
from tests.background import ROOT, TOOL, Background, free_port
from tests.conftest import require

from .conftest import START_TIMEOUT, kernel_ready
from .harness import new_namespace, run_scenario

SETPRIV_CAPS = ["setpriv", "--securebits=+noroot,+noroot_locked,+no_setuid_fixup,"
                "+no_setuid_fixup_locked"]


def setpriv(caps: str) -> list[str]:
    """uid 0 kept, every capability dropped except `caps` (e.g. "+bpf,+perfmon")."""
    return SETPRIV_CAPS + [f"--inh-caps=-all,{caps}", f"--ambient-caps=-all,{caps}",
                           f"--bounding-set=-all,{caps}", "--"]


class Running(Background):
    """A tcptrace-bpf command in the background, started once its ready line is out."""

    def __init__(self, args: list[str], prefix: list[str] = ()):
        super().__init__([*prefix, *TOOL, *args], "Ctrl-C to stop")
        self.wait_started(START_TIMEOUT)

    def stop(self, sig: int = signal.SIGINT, timeout: float = 60.0, wake=None) -> int:
        return super().stop(sig, timeout, wake)

    def records(self) -> list[dict]:
        return [json.loads(line) for line in self.out]


def our_bpf_objects(pid: int) -> tuple[set, set]:
    """Program and map ids held by a process: its fds' fdinfo names them."""
    progs, maps = set(), set()
    fdinfo = Path(f"/proc/{pid}/fdinfo")
    for fd in fdinfo.iterdir():
        try:
            text = fd.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            key, _, value = line.partition(":")
            if key == "prog_id":
                progs.add(int(value))
            elif key == "map_id":
                maps.add(int(value))
    return progs, maps


def loaded_ids(kind: str) -> set:
    out = subprocess.run(["bpftool", "-j", kind, "show"], capture_output=True, text=True,
                         check=True)
    return {p["id"] for p in json.loads(out.stdout or "[]")}


def pinned() -> set:
    root = Path("/sys/fs/bpf")
    return {str(p) for p in root.rglob("*")} if root.is_dir() else set()


def expect_subset(got: dict, exp: dict) -> None:
    assert {k: got[k] for k in exp} == exp


# ------------------------------------------------------------------------------ check
def test_check_trial_loads_and_compares_offsets():
    kernel_ready()
    out = subprocess.run(TOOL + ["check", "--json"], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out.stdout)
    assert report["ok"] is True
    with loader.BpfPrograms.start("auto") as t:  # the same trial loads auto makes
        assert report["backends"][0] == t.caps.backend.value
    status = {c["name"]: c for c in report["checks"]}
    assert status["privileges"]["status"] == "ok" and status["ring buffer"]["status"] == "ok"
    for c in report["checks"]:
        assert c["status"] == "ok" or c["remedy"], c  # every problem comes with a remedy
    btf = BTF.from_file()
    fields = {f"{s}.{m}" for s, m in loader.OFFSETS.values()}
    offsets = report["offsets"]
    assert offsets["compared"] >= len(loader.OFFSETS)
    for bad in offsets["mismatched"]:  # what it calls a mismatch really is one
        assert bad["field"] in fields | {f"{s}.{m}" for s, m in loader.OPTIONAL_OFFSETS.values()}
        s, m = bad["field"].split(".", 1)
        assert bad["btf"] == btf.offsetof(s, m) != bad["headers"]


def test_check_without_privileges_says_so_and_exits_1():
    kernel_ready()
    out = subprocess.run([*setpriv("+bpf"), *TOOL, "check"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "FAIL  privileges: missing CAP_PERFMON" in out.stdout
    assert "remedy: run as root, or with CAP_BPF + CAP_PERFMON" in out.stdout
    assert out.stdout.rstrip().endswith("tracing can work: no")


# ------------------------------------------------------------------- record and replay
def test_record_then_replay_and_serve(tmp_path):
    kernel_ready()
    rec = tmp_path / "opens.rec"
    recorder = Running(["record", str(rec), "--attach", "tracepoint"])
    normal, refused = run_scenario("normal4"), run_scenario("refused")
    time.sleep(1.0)
    assert recorder.stop() == 0, "".join(recorder.err)
    assert "records written" in "".join(recorder.err)

    out = subprocess.run(TOOL + ["replay", str(rec), "--json"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    got = [json.loads(line) for line in out.stdout.splitlines()]
    for sc in (normal, refused):
        mine = [r for r in got if r["netns"] == sc["netns"]]
        assert len(mine) == len(sc["expect"])
        for exp in sc["expect"]:
            expect_subset(next(r for r in mine if r["sport"] == exp["sport"]), exp)

    only = subprocess.run(TOOL + ["replay", str(rec), "--json", "--netns", str(refused["netns"])],
                          capture_output=True, text=True, timeout=120)
    assert [json.loads(x)["outcome"] for x in only.stdout.splitlines()] == ["refused"]

    port = free_port()
    server = Background(TOOL + ["replay", str(rec), "--listen", f"127.0.0.1:{port}"], "serving")
    try:
        server.wait_started(60)
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    finally:
        assert server.stop(signal.SIGINT) == 0
    assert 'tcptrace_handshakes_total{family="4",outcome="refused",path="active"}' in body
    line = next(x for x in body.splitlines()
                if x.startswith('tcptrace_handshakes_total{family="4",outcome="refused"'))
    assert float(line.split()[-1]) >= 1


def test_a_killed_recorder_leaves_a_readable_but_truncated_recording(tmp_path):
    kernel_ready()
    rec = tmp_path / "cut.rec"
    recorder = Running(["record", str(rec), "--attach", "tracepoint"])
    sc = run_scenario("refused")
    time.sleep(1.0)
    recorder.stop(signal.SIGKILL)
    out = subprocess.run(TOOL + ["replay", str(rec), "--json", "--netns", str(sc["netns"])],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 3
    err = out.stderr.strip().splitlines()
    assert len(err) == 1 and "without the end marker" in err[0] and "byte" in err[0]


# ------------------------------------------------------------------------- attribution
LISTENER = """
import socket, sys
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen()
print(s.getsockname()[1], flush=True)
sys.stdin.readline()
c, _ = s.accept(); c.close()
"""

CLIENT = """
import os, socket, sys
port, procs = int(sys.argv[1]), sys.argv[2]
open(procs, "w").write(str(os.getpid()))  # into the test's cgroup before connect()
c = socket.create_connection(("127.0.0.1", port)); c.close()
print(os.getpid())
"""


def test_processes_cgroups_and_a_listener_older_than_the_tracer():
    kernel_ready()
    mount = procfs.cgroup2_mount()
    require(mount is not None, "needs a cgroup2 mount")
    ns = new_namespace()
    nsenter = ["nsenter", f"--net=/run/netns/{ns}"]  # keeps /sys, unlike `ip netns exec`
    subprocess.run(nsenter + ["ip", "link", "set", "lo", "up"], check=True)
    cg = Path(mount) / f"tcptrace-test-{os.getpid()}"
    cg.mkdir(exist_ok=True)
    cg_id = cg.stat().st_ino
    listener = subprocess.Popen(nsenter + [sys.executable, "-c", LISTENER], text=True,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        port = int(listener.stdout.readline())
        tracer = Running(["trace", "--json", "--attach", "tracepoint", "--netns", f"/run/netns/{ns}"])
        client = subprocess.run(nsenter + [sys.executable, "-c", CLIENT, str(port),
                                           str(cg / "cgroup.procs")],
                                capture_output=True, text=True, check=True)
        listener.stdin.write("\n")
        listener.stdin.flush()
        listener.wait(10)
        time.sleep(1.0)
        tracer.stop()
    finally:
        listener.kill()
        cg.rmdir()
    got = {r["path"]: r for r in tracer.records()}
    assert set(got) == {"active", "passive"}, tracer.records()
    assert got["active"]["pid"] == int(client.stdout) and got["active"]["comm"] == "python"
    assert got["active"]["cgroup"] == cg_id != procfs.cgroup_id("self", mount)
    # the listener predates the tracer: its owner came from the start-up /proc walk
    assert got["passive"]["pid"] == listener.pid and got["passive"]["comm"] == "python"
    assert got["passive"]["cgroup"] == procfs.cgroup_id("self", mount)
    assert "existing listeners" in "".join(tracer.err)


# -------------------------------------------------------------------------- hard edges
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_nothing_of_ours_stays_loaded_after_a_signal(sig):
    kernel_ready()
    before_pins = pinned()
    tracer = Running(["trace", "--attach", "tracepoint"])
    progs, maps = our_bpf_objects(tracer.proc.pid)
    assert len(progs) >= 4 and len(maps) >= 4  # state, reset, destroy, synack probes; maps
    assert progs <= loaded_ids("prog")
    rc = tracer.stop(sig)
    assert rc == (-signal.SIGKILL if sig == signal.SIGKILL else 0)
    end = time.monotonic() + 10  # the kernel frees a killed process's programs lazily
    while (progs & loaded_ids("prog") or maps & loaded_ids("map")) and time.monotonic() < end:
        time.sleep(0.2)
    assert not progs & loaded_ids("prog") and not maps & loaded_ids("map")
    assert pinned() == before_pins


def test_least_privilege_cap_bpf_and_cap_perfmon_trace(tmp_path):
    kernel_ready()
    ns = new_namespace()
    tracer = Running(["trace", "--json", "--attach", "tracepoint", "--netns", f"/run/netns/{ns}"],
                     prefix=setpriv("+bpf,+perfmon"))
    status = Path(f"/proc/{tracer.proc.pid}/status").read_text()
    eff = int(next(x for x in status.splitlines() if x.startswith("CapEff")).split()[1], 16)
    assert eff == (1 << 38) | (1 << 39)  # exactly CAP_PERFMON + CAP_BPF
    sc = run_scenario("normal4", ns)
    time.sleep(1.0)
    assert tracer.stop() == 0, "".join(tracer.err)
    assert sorted(r["path"] for r in tracer.records()) == ["active", "passive"]
    assert all(r["netns"] == sc["netns"] for r in tracer.records())


def test_one_capability_short_is_one_line_exit_1():
    kernel_ready()
    out = subprocess.run([*setpriv("+bpf"), *TOOL, "trace"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [
        "tcptrace-bpf: error: missing CAP_PERFMON: run as root, or grant CAP_BPF + "
        "CAP_PERFMON (README: Privileges)"]


def test_half_open_entries_that_never_resolve_are_expired_and_counted():
    kernel_ready()
    ns = new_namespace()
    tracer = Running(["trace", "--json", "--attach", "tracepoint", "--half-open-timeout", "1",
                      "--netns", f"/run/netns/{ns}"])
    run_scenario("stuck_syn_sent", ns)  # 4 s in SYN_SENT, then closed
    time.sleep(0.5)
    assert tracer.stop() == 0
    summary = "".join(tracer.err)
    lost = summary.split("events lost: ", 1)[1].splitlines()[0]
    assert "half_open_expired=" in lost and "half_open_expired=0" not in lost, summary
    assert tracer.records() == []  # its end came after expiry: dropped, counted, not invented
