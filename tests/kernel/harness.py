"""Runs tests/kernel/scenarios.py in named network namespaces (shared by the real-kernel
tests and tests/fixtures/capture.py)."""

import json
import os
import subprocess
import sys
from pathlib import Path

SCENARIOS = Path(__file__).with_name("scenarios.py")
_NAMESPACES: list[str] = []


def new_namespace() -> str:
    """A named netns (/run/netns/NAME) that lives until the session ends, so its inode
    (the records' `netns`) is not reused by a later scenario."""
    ns = f"tcptrace-test-{os.getpid()}-{len(_NAMESPACES)}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    _NAMESPACES.append(ns)
    return ns


def run_scenario(name: str, ns: str = "") -> dict:
    """Run a scenario in a new named netns (or in `ns`)."""
    ns = ns or new_namespace()
    env = dict(os.environ, TCPTRACE_TEST_CGROUP=str(cgroup_id()))
    out = subprocess.run(["ip", "netns", "exec", ns, sys.executable, str(SCENARIOS), name],
                         capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, f"scenario {name} failed: {out.stderr}"
    return json.loads(out.stdout)


def cgroup_id(pid: str = "self") -> int:
    """A process's cgroup v2 id: the inode of its directory in the cgroup2 mount."""
    rel = next(line.split("::", 1)[1].strip() for line in open(f"/proc/{pid}/cgroup")
               if line.startswith("0::"))
    mount = next(line.split()[4] for line in open("/proc/self/mountinfo")
                 if line.split(" - ")[1].startswith("cgroup2 "))
    return os.stat(mount + rel).st_ino


def delete_namespaces() -> None:
    while _NAMESPACES:
        subprocess.run(["ip", "netns", "delete", _NAMESPACES.pop()], check=False)
