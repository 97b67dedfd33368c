"""Starting tcptrace-bpf (or any command) in the background, for the real-kernel tests and the
bench alike (bench/ imports this module with the checkout root on sys.path).

A Background process has its stderr read line by line by a daemon thread, and its stdout too
unless it goes elsewhere (a file, /dev/null: the bench keeps the tool's output out of its own
process, whose CPU would otherwise compete with the workload). It counts as started once a
stderr line holds `ready_text` (tcptrace-bpf's "tracing, Ctrl-C to stop" or "serving http")."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Optional

ROOT = Path(__file__).resolve().parents[1]
TOOL = [sys.executable, "-m", "tcptrace_bpf.cli"]


def free_port(low: int = 0, high: int = 0) -> int:
    """A TCP port free on 127.0.0.1 now: the kernel's pick, or the first free one in
    [low, high) (the bench keeps its workload below the ephemeral range, so that no client's
    own port ever collides with it)."""
    for port in range(low, high) if low else (0,):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise RuntimeError(f"no free port in [{low}, {high})")


class Background:
    """`cmd` running in the background. `out` and `err` hold the lines read so far; `started`
    is set by the ready line (or by the end of stderr: waiting stops there too)."""

    def __init__(self, cmd: list[str], ready_text: Optional[str], *, cwd: Path = ROOT,
                 env: Optional[dict] = None, stdout=subprocess.PIPE):
        self.cmd = cmd
        self.ready_text = ready_text
        self.proc = subprocess.Popen(cmd, cwd=cwd, env=env, text=True, stdin=subprocess.DEVNULL,
                                     stdout=stdout, stderr=subprocess.PIPE)
        self.out: list[str] = []
        self.err: list[str] = []
        self.ready_line = ""
        self.outlived_signal = False  # stop() had to kill it
        self.started = threading.Event()
        self._readers = [threading.Thread(target=self._read_err, daemon=True)]
        if stdout is subprocess.PIPE:
            self._readers.append(threading.Thread(target=self._read_out, daemon=True))
        for t in self._readers:
            t.start()

    def on_stdout(self, line: str) -> None:
        """One line of stdout as it arrives (a subclass may parse it instead)."""
        self.out.append(line)

    def _read_out(self) -> None:
        for line in self.proc.stdout:
            self.on_stdout(line)

    def _read_err(self) -> None:
        for line in self.proc.stderr:
            self.err.append(line)
            if self.ready_text and self.ready_text in line and not self.started.is_set():
                self.ready_line = line
                self.started.set()
        self.started.set()

    @property
    def stderr(self) -> str:
        return "".join(self.err)

    def wait_started(self, timeout: float,
                     ready: Optional[Callable[[], bool]] = None) -> "Background":
        """Until the ready line is out, or `ready()` says so (polled, for a command with no
        such line). If the process ends or the time runs out first: killed, RuntimeError with
        its stderr."""
        end = time.monotonic() + timeout
        while time.monotonic() < end and self.proc.poll() is None:
            if ready is None:
                self.started.wait(0.1)
                if self.ready_line:
                    return self
                if self.started.is_set():  # stderr closed without the ready line
                    break
            elif ready():
                return self
            else:
                time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"{' '.join(self.cmd)} did not start (exit {self.proc.returncode}):\n"
                           + self.stderr[-3000:])

    def stop(self, sig: int = signal.SIGINT, timeout: float = 30.0,
             wake: Optional[Callable[[], None]] = None) -> int:
        """Send `sig` (then `wake()`, for a command that notices signals only on activity),
        wait for the exit and the last lines; killed if it outlives `timeout`. The exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            if wake:
                wake()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.outlived_signal = True
            self.kill()
        for t in self._readers:
            t.join(5)
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
