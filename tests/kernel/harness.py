"""Runs tests/kernel/scenarios.py in named network namespaces (shared by the real-kernel
tests and tests/fixtures/capture.py)."""

import itertools
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

SCENARIOS = Path(__file__).with_name("scenarios.py")
# A scenario that could not produce its handshake (a crossed-SYN open that came out
# one-sided) says {"retry": why}; it is run again, each time in a fresh namespace.
ATTEMPTS = 5
_NAMESPACES: list[str] = []
_NUMBER = itertools.count()
_LOCK = threading.Lock()  # scenarios may run from several threads (test_crossed_stress)


def new_namespace() -> str:
    """A named netns (/run/netns/NAME) that lives until the session ends, so its inode
    (the records' `netns`) is not reused by a later scenario."""
    with _LOCK:
        ns = f"tcptrace-test-{os.getpid()}-{next(_NUMBER)}"
        _NAMESPACES.append(ns)
    subprocess.run(["ip", "netns", "add", ns], check=True)
    return ns


def run_scenario(name: str, ns: str = "") -> dict:
    """Run a scenario in a new named netns (or, the first attempt, in `ns`). A retried
    scenario's abandoned attempts stay in namespaces of their own, which no test reads: the
    result's `netns` holds only the attempt it describes (`attempts` counts them,
    `abandoned` says why each earlier one was not used). `since` is the wall-clock time just
    before that attempt started (and its namespace was made): inode numbers are recycled as
    soon as a namespace is gone, so a record of that netns from before `since` belongs to
    another, older namespace (one that someone else made and deleted)."""
    env = dict(os.environ, TCPTRACE_TEST_CGROUP=str(cgroup_id()))
    abandoned = []
    for attempt in range(1, ATTEMPTS + 1):
        since = time.time()
        where = ns if ns and attempt == 1 else new_namespace()
        out = subprocess.run(["ip", "netns", "exec", where, sys.executable, str(SCENARIOS), name],
                             capture_output=True, text=True, timeout=120, env=env)
        assert out.returncode == 0, f"scenario {name} failed: {out.stderr}"
        result = json.loads(out.stdout)
        if "retry" not in result:
            result.update(attempts=attempt, abandoned=abandoned, since=since)
            return result
        abandoned.append({"netns": result["netns"], "why": result["retry"]})
    raise AssertionError(f"scenario {name}: no usable run in {ATTEMPTS} attempts: {abandoned}")


def cgroup_id(pid: str = "self") -> int:
    """A process's cgroup v2 id: the inode of its directory in the cgroup2 mount."""
    rel = next(line.split("::", 1)[1].strip() for line in open(f"/proc/{pid}/cgroup")
               if line.startswith("0::"))
    mount = next(line.split()[4] for line in open("/proc/self/mountinfo")
                 if line.split(" - ")[1].startswith("cgroup2 "))
    return os.stat(mount + rel).st_ino


def delete_namespaces() -> None:
    with _LOCK:
        names = _NAMESPACES[:]
        _NAMESPACES.clear()
    for ns in names:
        subprocess.run(["ip", "netns", "delete", ns], check=False)


MATCH_KEYS = ("saddr", "sport", "daddr", "dport")


def compare(want: list[dict], got: list[dict]) -> list[str]:
    """What is wrong with a namespace's records `got` (the tracer's JSON objects), given the
    scenario's expectations `want`: one record per expected socket, found by its addresses
    and ports, with every expected field equal (as tests/kernel/test_handshakes.py checks).
    Empty when all is right."""
    problems = []
    if len(got) != len(want):
        problems.append(f"{len(got)} records, want {len(want)}: {got}")
    for exp in want:
        match = [r for r in got if all(r.get(k) == exp[k] for k in MATCH_KEYS)]
        if len(match) != 1:
            problems.append(f"{len(match)} records for {exp}")
            continue
        rec = match[0]
        wrong = {k: (rec.get(k), v) for k, v in exp.items() if rec.get(k) != v}
        if wrong:
            problems.append(f"{exp['sport']}->{exp['dport']}: (got, want) {wrong}; record {rec}")
        if "duration_s" in exp:
            continue  # the scenario says what it must be (None: the kernel did not time it)
        if rec.get("duration_s") is None or rec["duration_s"] < 0:
            problems.append(f"{exp['sport']}->{exp['dport']}: duration_s {rec.get('duration_s')}")
    return problems
