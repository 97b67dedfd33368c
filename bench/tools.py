"""The tracers under test, each started (its ready line awaited) before a window's workload
and stopped with SIGINT after it; each reports its own view of the window.

tcptrace-bpf's counts come from its `--summary-json FILE` (README: the run summary), never from
its text. bcc's tcpstates has no summary: its output lines are counted.

What "seen" means for `trace` (issue 13): the open lines the tool wrote, the summary's
`opens_shown`. Its path/outcome counts come from in-kernel counting (exact even when lines are
lost), so they no longer measure loss; a checkout whose summary has no `opens_shown` (--tree of
an older commit) falls back to `opens_total`, which there counted the lines shown. Trace runs
unfiltered (no --port: the kernel filter would hide work), so seen is every open on the host:
the workload's plus the bench's own few (nothing subtracted). trace-failed and trace-port show
what a kernel-side filter costs when it matches nothing: 0 lines expected.

Start time: from spawning the command to its ready line on stderr (`start_s`)."""

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

    def __init__(self, args, port: int, attach: Optional[str] = None):
        self.args, self.port = args, port
        self.attach = attach or getattr(args, "attach", "tracepoint")
        self.bg: Optional[Background] = None
        self.err_path = BUILD / f"{self.name}.stderr"
        self.start_s: Optional[float] = None  # spawn to ready line (or ready())

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
        t0 = time.monotonic()
        try:
            self.bg = Background(self.cmd(), self.ready_text, cwd=self.args.tree,
                                 env=self.env(), stdout=out)
        finally:
            if out is not subprocess.DEVNULL:
                out.close()  # the child has its own copy
        self.bg.wait_started(self.args.start_timeout,
                             None if self.ready_text else self.ready)
        self.start_s = round(time.monotonic() - t0, 3)
        time.sleep(0.3)

    def stop(self) -> dict:
        """SIGINT, wait for exit; the tool's own view of the window."""
        alive = self.proc.poll() is None
        rc = self.bg.stop(signal.SIGINT, 30, self.wake)
        self.err_path.write_text(self.bg.stderr)
        res = self.result()
        res.update(exit_code=rc, alive_at_end=alive, start_s=self.start_s,
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
    expects_workload = True

    def __init__(self, args, port, attach=None):
        super().__init__(args, port, attach)
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
            return {"counts": {}, "seen": 0, "tool_lost": None, "tool_lost_total": None,
                    "tool_lost_by": {}, "opens_shown": None, "records_read": None,
                    "summary_found": False, "stderr_tail": self.bg.stderr[-1500:]}
        counts = {f"{path}/{outcome}": n for path, by_outcome in doc["opens"].items()
                  for outcome, n in by_outcome.items() if n}
        shown = doc.get("opens_shown")  # issue 13; absent in older checkouts
        return {"counts": counts, "opens_total": doc["opens_total"], "backend": doc.get("backend"),
                "opens_shown": shown, "records_read": doc.get("records_read"),
                "seen": doc["opens_total"] if shown is None else shown,
                "seen_from": "opens_total" if shown is None else "opens_shown",
                # tool-reported loss: ring-buffer overflow (what loses lines), and every reason
                "tool_lost": doc["lost"].get("ringbuf_full", 0),
                "tool_lost_total": doc["lost_total"],
                "tool_lost_by": doc["lost"], "summary_found": True, "stderr_tail": ""}


class Export(TcptraceTool):
    name = "export"
    ready_text = "serving http"

    def __init__(self, args, port, attach=None):
        super().__init__(args, port, attach)
        self.listen = f"127.0.0.1:{free_port(31000, 32000)}"  # below the ephemeral range
        self.scrapes = 0
        self.scraped = {}

    def cmd(self):
        return self.command("export", "--attach", self.attach, "--listen", self.listen)

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
        res["seen"] = res.get("opens_total", 0)  # export writes no lines: its counts
        res["summary_seen"] = res["seen"]
        s1, s2 = self.scraped.get("first", {}), self.scraped.get("second", {})
        if "handshakes_total" in s1 and "handshakes_total" in s2:
            # what a user sees: tcptrace_handshakes_total at the end. A scrape is itself one
            # connection (two opens) that may already be in the value it returns: the second
            # scrape's increase says how much one scrape adds, at most its two opens (on a
            # shared host, others' opens between the two scrapes land in that increase too)
            res["seen"] = s1["handshakes_total"] - min(
                2, s2["handshakes_total"] - s1["handshakes_total"])
            res["seen_from"] = "scrape"
        else:  # no scrape: the end-of-run summary, less the scrape connections
            res["seen"] -= 2 * self.scrapes
            res["seen_from"] = "summary"
        res["scrape"] = self.scraped
        return res


class Trace(TcptraceTool):
    """trace --json > /dev/null, unfiltered: every open on the host is a line (expected: the
    workload's two per connection; the bench's own few opens are not subtracted)."""
    name = "trace"
    ready_text = "tracing, Ctrl-C to stop"
    expects_workload = True  # lines expected = 2 x the workload's connections
    filter_args: tuple[str, ...] = ()

    def cmd(self):
        return self.command("trace", "--json", "--attach", self.attach, *self.filter_args)


class TraceFailed(Trace):
    """trace --json --failed > /dev/null: nothing fails in the churn, so 0 lines expected."""
    name = "trace-failed"
    expects_workload = False
    filter_args = ("--failed",)


UNUSED_PORT = 1  # tcpmux: nothing on the host uses it (Tcpstates.wake connects to it only
                 # after the tool has been stopped)


class TracePort(Trace):
    """trace --json --port <a port nothing uses> > /dev/null: 0 lines expected."""
    name = "trace-port"
    expects_workload = False
    filter_args = ("--port", str(UNUSED_PORT))


class Tcpstates(Tool):
    """bcc's tcpstates: one perf-buffer event per state change, printed by Python."""
    name = "tcpstates"
    out_path = BUILD / "tcpstates.out"
    expects_workload = True

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
        return {"seen": seen, "lines": lines, "tool_lost": lost, "tool_lost_total": lost,
                "tool_lost_by": {"perf_buffer": lost}, "summary_found": True}


TOOLS = {"export": Export, "trace": Trace, "trace-failed": TraceFailed, "trace-port": TracePort,
         "tcpstates": Tcpstates}
TCPTRACE_MODES = ("export", "trace", "trace-failed", "trace-port")
