"""The tracers under test, each started (its ready line awaited) before a window's workload
and stopped with SIGINT after it; each reports its own view of the window.

tcptrace-bpf's counts come from its `--summary-json FILE` (README: the run summary), never from
its text. bcc's tcpstates has no summary: its output lines are counted."""

from __future__ import annotations

import json
import os
import platform
import re
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Optional

from bench import BUILD
from tests.background import TOOL, Background, free_port

TCPSTATES = "/usr/sbin/tcpstates-bpfcc"
HEADERS = Path("/var/cache/tcptrace-bpf/kernel-headers") / platform.release()


class Tool:
    """A tracer run around one workload window."""
    name = "?"
    ready_text: Optional[str] = None  # the stderr line that says it is tracing
    out_path: Optional[Path] = None   # where its stdout goes (else /dev/null)

    def __init__(self, args, port: int):
        self.args, self.port = args, port
        self.bg: Optional[Background] = None
        self.err_path = BUILD / f"{self.name}.stderr"

    @property
    def proc(self) -> subprocess.Popen:
        return self.bg.proc

    def cmd(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> Optional[dict]:
        return None

    def ready(self) -> bool:
        """For a tool with no ready line: polled until true."""
        raise NotImplementedError

    def start(self) -> None:
        out = open(self.out_path, "w") if self.out_path else subprocess.DEVNULL
        try:
            self.bg = Background(self.cmd(), self.ready_text, cwd=self.args.tree,
                                 env=self.env(), stdout=out)
        finally:
            if out is not subprocess.DEVNULL:
                out.close()  # the child has its own copy
        self.bg.wait_started(self.args.start_timeout,
                             None if self.ready_text else self.ready)
        time.sleep(0.3)

    def stop(self) -> dict:
        """SIGINT, wait for exit; the tool's own view of the window."""
        alive = self.proc.poll() is None
        rc = self.bg.stop(signal.SIGINT, 30, self.wake)
        self.err_path.write_text(self.bg.stderr)
        res = self.result()
        res.update(exit_code=rc, alive_at_end=alive,
                   killed_after_sigint=self.bg.outlived_signal)
        return res

    def kill(self) -> None:
        """Never leave a tracer behind (a window interrupted or failed)."""
        if self.bg:
            self.bg.kill()

    def wake(self) -> None:
        """Make the tool's poll return so it sees the signal (see Tcpstates)."""

    def result(self) -> dict:
        raise NotImplementedError


class TcptraceTool(Tool):
    """tcptrace-bpf export / trace --json; counts from its --summary-json document."""

    def __init__(self, args, port):
        super().__init__(args, port)
        self.summary_path = BUILD / f"{self.name}.summary.json"

    def command(self, sub: str, *args: str) -> list[str]:
        return [*TOOL, sub, "--summary-json", str(self.summary_path), *args]

    def start(self) -> None:
        self.summary_path.unlink(missing_ok=True)  # an earlier window's
        super().start()

    def result(self) -> dict:
        try:
            doc = json.loads(self.summary_path.read_text())
        except (OSError, ValueError):
            return {"counts": {}, "seen": 0, "tool_lost": None, "tool_lost_by": {},
                    "summary_found": False, "stderr_tail": self.bg.stderr[-1500:]}
        counts = {f"{path}/{outcome}": n for path, by_outcome in doc["opens"].items()
                  for outcome, n in by_outcome.items() if n}
        return {"counts": counts, "seen": doc["opens_total"], "tool_lost": doc["lost_total"],
                "tool_lost_by": doc["lost"], "summary_found": True, "stderr_tail": ""}


class Export(TcptraceTool):
    name = "export"
    ready_text = "serving http"

    def __init__(self, args, port):
        super().__init__(args, port)
        self.listen = f"127.0.0.1:{free_port(31000, 32000)}"  # below the ephemeral range
        self.scrapes = 0
        self.scraped = {}

    def cmd(self):
        return self.command("export", "--attach", "tracepoint", "--listen", self.listen)

    def scrape(self) -> dict:
        """The exporter's own totals at the end (the issue asks for these): sum of
        tcptrace_handshakes_total over every label, and of tcptrace_events_lost_total."""
        self.scrapes += 1
        body = urllib.request.urlopen(f"http://{self.listen}/metrics", timeout=30).read().decode()
        tot = lost = 0.0
        for line in body.splitlines():
            if line.startswith("tcptrace_handshakes_total{"):
                tot += float(line.rsplit(" ", 1)[1])
            elif line.startswith("tcptrace_events_lost_total{"):
                lost += float(line.rsplit(" ", 1)[1])
        return {"handshakes_total": int(tot), "events_lost_total": int(lost)}

    def result(self) -> dict:
        res = super().result()
        res["summary_seen"] = res["seen"]
        s1, s2 = self.scraped.get("first", {}), self.scraped.get("second", {})
        if "handshakes_total" in s1 and "handshakes_total" in s2:
            # what a user sees: tcptrace_handshakes_total at the end. A scrape is itself one
            # connection (two opens) that may already be in the value it returns: the second
            # scrape's increase says how much one scrape adds.
            res["seen"] = s1["handshakes_total"] - (s2["handshakes_total"] - s1["handshakes_total"])
            res["seen_from"] = "scrape"
        else:  # no scrape: the end-of-run summary, less the scrape connections
            res["seen"] -= 2 * self.scrapes
            res["seen_from"] = "summary"
        res["scrape"] = self.scraped
        return res


class Trace(TcptraceTool):
    name = "trace"
    ready_text = "tracing, Ctrl-C to stop"

    def cmd(self):
        # stdout is /dev/null; --port keeps other host traffic out of the count (the filter
        # runs after classification, so the per-record work is the same)
        return self.command("trace", "--json", "--attach", "tracepoint", "--port", str(self.port))


class Tcpstates(Tool):
    """bcc's tcpstates: one perf-buffer event per state change, printed by Python."""
    name = "tcpstates"
    out_path = BUILD / "tcpstates.out"

    def cmd(self):
        return ["/usr/bin/python3", TCPSTATES]

    def wake(self) -> None:
        """tcpstates blocks in perf_buffer_poll() with no timeout and sees SIGINT only when an
        event arrives (seen: it never exits on an idle host). One refused connect to port 1
        makes state changes, so it handles the interrupt and flushes its stdout."""
        time.sleep(0.5)
        with socket.socket() as s:
            s.settimeout(1)
            try:
                s.connect(("127.0.0.1", 1))
            except OSError:
                pass

    def env(self):
        env = dict(os.environ)
        if (HEADERS / "include").is_dir():
            env["BCC_KERNEL_SOURCE"] = str(HEADERS)
        return env

    def ready(self) -> bool:
        """Its header line sits in a block-buffered stdout: ready = its perf buffers are
        open (one perf_event fd per CPU for each of its two buffers, plus the tracepoint)."""
        try:
            n = sum(1 for fd in os.listdir(f"/proc/{self.proc.pid}/fd")
                    if os.readlink(f"/proc/{self.proc.pid}/fd/{fd}") == "anon_inode:[perf_event]")
        except OSError:
            return False
        return n >= 1 + 2 * os.cpu_count()

    def result(self) -> dict:
        seen = lines = 0
        p = str(self.port)
        with open(self.out_path, errors="replace") as f:
            for line in f:
                lines += 1
                t = line.split()
                # SKADDR C-PID C-COMM LADDR LPORT RADDR RPORT OLDSTATE -> NEWSTATE MS
                if (len(t) >= 8 and t[-2] == "ESTABLISHED" and t[-3] == "->"
                        and t[-4] in ("SYN_SENT", "SYN_RECV") and p in (t[-5], t[-7])):
                    seen += 1
        text = self.out_path.read_text(errors="replace") + self.bg.stderr
        lost = sum(int(n) for n in re.findall(r"Possibly lost (\d+) samples", text))
        return {"seen": seen, "lines": lines, "tool_lost": lost,
                "tool_lost_by": {"perf_buffer": lost}, "summary_found": True}


TOOLS = {"export": Export, "trace": Trace, "tcpstates": Tcpstates}
