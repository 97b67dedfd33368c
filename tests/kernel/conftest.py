"""Real-kernel fixtures: one live tracer for the session, scenarios in fresh netns."""

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from tests.background import TOOL, Background
from tests.conftest import require
from tests.kernel.harness import delete_namespaces

# Backend of the session tracer: tracepoint, the one the CI kernel allows; the VM run
# (vm/guest-run.sh) sets kprobe, fentry or auto.
ATTACH = os.environ.get("TCPTRACE_TEST_ATTACH", "tracepoint")
# Seconds a tracer may take to compile and attach (a compile takes minutes under qemu TCG).
START_TIMEOUT = float(os.environ.get("TCPTRACE_TEST_START_TIMEOUT", "120"))


def kernel_ready() -> None:
    require(os.geteuid() == 0, "needs root")
    require(Path("/sys/kernel/btf/vmlinux").exists(), "needs BTF")
    require(shutil.which("nft") is not None and shutil.which("unshare") is not None,
            "needs nft and unshare")
    try:
        import bcc  # noqa: F401
    except ImportError:
        require(False, "needs bcc (python3-bpfcc)")


class LiveTracer(Background):
    """`tcptrace-bpf trace --json` in the background, started; records collected as they print."""

    def __init__(self, *args: str):
        self.records: list[dict] = []    # opens (and raw events)
        self.listeners: list[dict] = []  # "type": "listener" lines
        super().__init__(TOOL + ["trace", "--json", *args], "tracing, Ctrl-C to stop")
        self.wait_started(START_TIMEOUT)
        self.announce = self.ready_line.split("tcptrace-bpf: ", 1)[-1].strip()

    def on_stdout(self, line: str) -> None:
        rec = json.loads(line)
        (self.listeners if rec.get("type") == "listener" else self.records).append(rec)

    @property
    def backend(self) -> str:
        """The backend the tracer says it attached: its announce line reads
        `backend <name> (...)`."""
        return self.announce.split()[1]

    def wait_for(self, netns: int, count: int, timeout: float = 15.0,
                 pid: int | None = None) -> list[dict]:
        """Records of one namespace (and, given `pid`, of the scenario's own process), once
        `count` have arrived (or the timeout passed). Namespace inodes are recycled as soon as
        a namespace dies, so records of an earlier namespace with the same inode (another
        test's, or another program's on this host) can sit in the list: `pid` tells them apart."""
        def mine() -> list[dict]:
            return [r for r in self.records
                    if r["netns"] == netns and (pid is None or r["pid"] == pid)]
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if len(mine()) >= count:
                time.sleep(0.3)  # anything extra arrives too, and fails the test
                break
            time.sleep(0.05)
        return mine()


@pytest.fixture(scope="session", autouse=True)
def _delete_namespaces():
    yield
    delete_namespaces()


_SESSION: dict[str, LiveTracer] = {}


def session_tracer() -> LiveTracer:
    """The session's one live tracer (`--attach $TCPTRACE_TEST_ATTACH`), started on first use;
    tests/vm shares it too: under qemu TCG each start is a compile of 1.5 min or more."""
    if "tracer" not in _SESSION:
        kernel_ready()
        t = LiveTracer("--attach", ATTACH)
        if ATTACH != "auto" and t.backend != ATTACH:
            t.stop()
            raise RuntimeError(f"asked for --attach {ATTACH}, tracer says: {t.announce}")
        _SESSION["tracer"] = t
    return _SESSION["tracer"]


def stop_session_tracer() -> None:
    if "tracer" in _SESSION:
        _SESSION.pop("tracer").stop()


@pytest.fixture(scope="session")
def tracer():
    yield session_tracer()
    stop_session_tracer()
