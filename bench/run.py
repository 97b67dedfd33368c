"""Benchmark runner: connection churn untraced and traced, paired and alternated, one table.

    sudo .venv/bin/python bench/run.py [--quick] [--rounds 3] [--duration 10] [--profile]

Order of one run (rounds R, modes export, trace, tcpstates):
    baseline, export, baseline, trace, baseline, tcpstates, baseline, export, ... , baseline
so every traced window has an untraced window right before and right after it; its ratio is
its conn/s over the mean of those two. Each window is one run of bench/churn.c (C clients and
S servers on 127.0.0.1:PORT, RST close), for a fixed duration. A tool is started, and its
ready line awaited, before the workload starts; it is stopped with SIGINT after the workload
has ended and the tool has gone idle (drained), and its own end-of-run counts are read.

Handshakes expected = 2 x the workload's completed connections (one active, one passive open
each); seen = what the tool reported for the workload's port; lost = expected - seen.
Tool CPU = (utime + stime of the tool process during the window) / window wall time, in % of
one core (the machine has 2). Peak RSS = VmHWM of the tool process at the end of the window
(for tcptrace-bpf and tcpstates that includes bcc's in-process LLVM compile at start); RSS =
VmRSS at the end of the window.

Progress goes to stderr; the table (markdown) to stdout; every number to bench/build/last-run.json.
--profile adds a pass with kernel.bpf_stats_enabled=1 (bpftool prog show: ns per BPF run,
runs per connection) and py-spy on the tool process (where the Python time goes).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
BUILD = BENCH / "build"
PY = sys.executable
TCPSTATES = "/usr/sbin/tcpstates-bpfcc"
HEADERS = Path("/var/cache/tcptrace-bpf/kernel-headers") / platform.release()
CLK_TCK = os.sysconf("SC_CLK_TCK")
GOALS = {"export": 0.95, "trace": 0.90}
PATHS = ("active", "passive", "simultaneous", "self")


def log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


# -------------------------------------------------------------------------- helpers
def build_churn() -> Path:
    BUILD.mkdir(exist_ok=True)
    exe, src = BUILD / "churn", BENCH / "churn.c"
    if not exe.exists() or exe.stat().st_mtime < src.stat().st_mtime:
        subprocess.run(["gcc", "-O2", "-Wall", "-o", str(exe), str(src)], check=True)
    return exe


def free_port(low: int = 20000, high: int = 32000) -> int:
    """A free TCP port below the ephemeral range, so no client ever collides with it."""
    for port in range(low + os.getpid() % 1000, high):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    raise RuntimeError("no free port")


def cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)


def status_kib(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except FileNotFoundError:
        pass
    return -1


def proc_ticks() -> dict:
    """pid -> (comm, utime + stime) of every process now."""
    out = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    head, tail = f.read().rsplit(")", 1)
                t = tail.split()
                comm = head.split("(", 1)[1]
                if t[1] == "2" or d == "2":  # kernel threads (ksoftirqd runs the workload's softirqs)
                    comm = "[k]" + comm
                out[int(d)] = (comm, int(t[11]) + int(t[12]))
            except (OSError, IndexError, ValueError):
                pass
    return out


def other_cpu(before: dict, after: dict, mine: set, seconds: float) -> dict:
    """CPU (% of one core) used during a window by processes that are neither the workload,
    the tool nor this runner: evidence that the machine was shared."""
    used = {}
    for pid, (comm, t1) in after.items():
        if pid in mine or comm == "churn" or comm.startswith("[k]") or pid not in before:
            continue
        d = t1 - before[pid][1]
        if d > 0:
            used[f"{comm}[{pid}]"] = d
    total = sum(used.values()) / CLK_TCK / seconds
    top = sorted(used.items(), key=lambda kv: -kv[1])[:3]
    return {"share": round(total, 3),
            "top": {k: round(v / CLK_TCK / seconds, 3) for k, v in top}}


def wait_idle(pid: int, limit_s: float, below: float = 0.05) -> float:
    """Wait until the process uses < `below` of a core over 0.5 s; return seconds waited."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit_s:
        try:
            a = cpu_ticks(pid)
            time.sleep(0.5)
            if (cpu_ticks(pid) - a) / CLK_TCK / 0.5 < below:
                break
        except FileNotFoundError:
            break
    return round(time.monotonic() - t0, 2)


def machine() -> dict:
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                if l.startswith("model name")), "?")
    mem_kib = status_like("/proc/meminfo", "MemTotal")

    def pkg(name):
        r = subprocess.run(["dpkg-query", "-W", "-f=${Version}", name], capture_output=True, text=True)
        return r.stdout.strip() or "not installed"
    rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True).stdout.strip()
    return {"kernel": platform.release(), "cpu": cpu, "cores": os.cpu_count(),
            "mem_gib": round(mem_kib / 2**20, 1), "python": platform.python_version(),
            "bcc": pkg("python3-bpfcc"), "bpfcc_tools": pkg("bpfcc-tools"), "git": rev,
            "loadavg_before": open("/proc/loadavg").read().split()[:3]}


def status_like(path: str, key: str) -> int:
    for line in open(path):
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return -1


# -------------------------------------------------------------------------- tools
class Tool:
    """A tracer run around one workload window."""
    name = "?"

    def __init__(self, args, port: int):
        self.args, self.port = args, port
        self.proc = None
        self.err_path = BUILD / f"{self.name}.stderr"
        self.out_path = None

    def cmd(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict:
        return dict(os.environ)

    def ready(self) -> bool:
        raise NotImplementedError

    def start(self) -> None:
        out = open(self.out_path, "w") if self.out_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(self.cmd(), cwd=self.args.tree, env=self.env(),
                                     stdout=out, stderr=open(self.err_path, "w"),
                                     stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + self.args.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited {self.proc.returncode} at start: "
                                   + self.err_path.read_text()[-2000:])
            if self.ready():
                time.sleep(0.3)
                return
            time.sleep(0.1)
        self.proc.kill()
        raise RuntimeError(f"{self.name} not ready after {self.args.start_timeout} s")

    def stop(self) -> dict:
        """SIGINT, wait for exit; the tool's own view of the window."""
        alive, stuck = self.proc.poll() is None, False
        if alive:
            self.proc.send_signal(signal.SIGINT)
            self.wake()
        try:
            rc = self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
            stuck = True
        res = self.result()
        res.update(exit_code=rc, alive_at_end=alive, killed_after_sigint=stuck)
        return res

    def wake(self) -> None:
        """Make the tool's poll return so it sees the signal (see Tcpstates)."""

    def result(self) -> dict:
        raise NotImplementedError


class TcptraceTool(Tool):
    """tcptrace-bpf export / trace --json; counts from its end-of-run summary on stderr."""
    ready_text = ""

    def base(self) -> list[str]:
        return [PY, "-m", "tcptrace_bpf.cli"]

    def ready(self) -> bool:
        return self.ready_text in self.err_path.read_text()

    def result(self) -> dict:
        text = self.err_path.read_text()
        counts, lost_by = {}, {}
        for m in re.finditer(r"^  (\w+)\s+(\w+)\s+(\d+)$", text, re.M):
            if m.group(1) in PATHS:
                counts[f"{m.group(1)}/{m.group(2)}"] = int(m.group(3))
        m = re.search(r"events lost: (\d+)(?: \((.*)\))?", text)
        if m and m.group(2):
            lost_by = {k: int(v) for k, v in (kv.split("=") for kv in m.group(2).split(", "))}
        return {"counts": counts, "seen": sum(counts.values()),
                "tool_lost": int(m.group(1)) if m else None, "tool_lost_by": lost_by,
                "summary_found": "summary" in text,
                "stderr_tail": "" if "summary" in text else text[-1500:]}


class Export(TcptraceTool):
    name = "export"
    ready_text = "serving http"

    def __init__(self, args, port):
        super().__init__(args, port)
        self.listen = f"127.0.0.1:{free_port(32000 - 999, 32700)}"
        self.scrapes = 0
        self.scraped = {}

    def cmd(self):
        return self.base() + ["export", "--attach", "tracepoint", "--listen", self.listen]

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
        # stdout is /dev/null (Popen without out_path); --port keeps other host traffic out
        # of the count (the filter runs after classification, so the per-record work is the same)
        return self.base() + ["trace", "--json", "--attach", "tracepoint", "--port", str(self.port)]


class Tcpstates(Tool):
    """bcc's tcpstates: one perf-buffer event per state change, printed by Python."""
    name = "tcpstates"

    def __init__(self, args, port):
        super().__init__(args, port)
        self.out_path = BUILD / "tcpstates.out"

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
        text = self.out_path.read_text(errors="replace") + self.err_path.read_text(errors="replace")
        lost = sum(int(n) for n in re.findall(r"Possibly lost (\d+) samples", text))
        return {"seen": seen, "lines": lines, "tool_lost": lost,
                "tool_lost_by": {"perf_buffer": lost}, "summary_found": True}


TOOLS = {"export": Export, "trace": Trace, "tcpstates": Tcpstates}


# -------------------------------------------------------------------------- one window
def churn(args, exe: Path, port: int) -> dict:
    r = subprocess.run([str(exe), "-d", str(args.duration), "-c", str(args.clients),
                        "-s", str(args.servers), "-p", str(port)],
                       capture_output=True, text=True, timeout=args.duration + 60)
    if r.returncode:
        raise RuntimeError(f"churn failed: {r.stderr}")
    return json.loads(r.stdout)


TRACING_TYPES = ("tracepoint", "raw_tracepoint", "kprobe", "tracing", "perf_event")


def foreign_tracing_progs() -> list[str]:
    """Tracing BPF programs already loaded (someone else's tracer): they run in the workload's
    context and slow it, so a window with any is marked disturbed."""
    return sorted(f"{p.get('name', '?')}#{i}" for i, p in bpf_progs().items()
                  if p.get("type") in TRACING_TYPES)


def window(args, exe: Path, mode: str, port: int) -> dict:
    rec = {"mode": mode, "foreign_bpf": foreign_tracing_progs()}
    if mode == "baseline":
        p0 = proc_ticks()
        rec["work"] = churn(args, exe, port)
        rec["other_cpu"] = other_cpu(p0, proc_ticks(), {os.getpid()}, rec["work"]["elapsed_s"])
        return rec
    tool = TOOLS[mode](args, port)
    t0 = time.monotonic()
    tool.start()
    try:
        return _traced_window(args, exe, port, tool, rec, t0)
    finally:
        if tool.proc.poll() is None:  # interrupted or failed: never leave a tracer behind
            tool.proc.kill()
            tool.proc.wait()


def _traced_window(args, exe, port, tool, rec, t0) -> dict:
    rec["start_s"] = round(time.monotonic() - t0, 2)
    pid = tool.proc.pid
    c0 = cpu_ticks(pid)
    p0 = proc_ticks()
    rec["work"] = churn(args, exe, port)
    rec["other_cpu"] = other_cpu(p0, proc_ticks(), {os.getpid(), pid}, rec["work"]["elapsed_s"])
    try:
        c1 = cpu_ticks(pid)
        rec["peak_rss_kib"] = status_kib(pid, "VmHWM")
        rec["rss_kib"] = status_kib(pid, "VmRSS")
    except FileNotFoundError:
        c1, rec["peak_rss_kib"], rec["rss_kib"] = c0, -1, -1
    rec["cpu_share"] = round((c1 - c0) / CLK_TCK / rec["work"]["elapsed_s"], 4)
    rec["drain_s"] = wait_idle(pid, 20)
    if isinstance(tool, Export) and tool.proc.poll() is None:
        try:
            tool.scraped = {"first": tool.scrape()}
            time.sleep(1.0)  # longer than the tool's ring-buffer poll interval
            tool.scraped["second"] = tool.scrape()
        except OSError as exc:
            tool.scraped["error"] = str(exc)
    rec["tool"] = tool.stop()
    rec["expected"] = 2 * rec["work"]["connections"]
    rec["seen"] = rec["tool"]["seen"]
    rec["lost"] = rec["expected"] - rec["seen"]
    return rec


def schedule(rounds: int, modes: list[str]) -> list[str]:
    seq = ["baseline"]
    for _ in range(rounds):
        for m in modes:
            seq += [m, "baseline"]
    return seq


def wait_quiet(limit_s: float) -> float:
    """Wait (at most limit_s) until other processes use < 5% of a core over 1 s."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit_s:
        a = proc_ticks()
        time.sleep(1.0)
        if (other_cpu(a, proc_ticks(), {os.getpid()}, 1.0)["share"] < 0.05
                and not foreign_tracing_progs()):
            break
    return round(time.monotonic() - t0, 1)


def run_windows(args, exe: Path, port: int) -> list[dict]:
    seq = schedule(args.rounds, args.modes)
    out = []
    for i, mode in enumerate(seq):
        for attempt in range(1 + args.retries):
            waited = wait_quiet(args.wait_quiet) if args.wait_quiet else 0
            rec = window(args, exe, mode, port)
            rec["waited_for_quiet_s"], rec["attempt"] = waited, attempt + 1
            if rec["foreign_bpf"]:
                rec["other_cpu"]["share"] = max(rec["other_cpu"]["share"], 1.0)
                rec["other_cpu"]["top"]["foreign BPF tracing programs"] = rec["foreign_bpf"][:4]
            if rec["other_cpu"]["share"] <= 0.05:
                break
            log(f"[{i + 1}/{len(seq)}] {mode} disturbed ({rec['other_cpu']}), "
                f"{'again' if attempt < args.retries else 'kept'}")
        out.append(rec)
        w = rec["work"]
        extra = ""
        if mode != "baseline":
            extra = (f" seen {rec['seen']}/{rec['expected']} lost {rec['lost']}"
                     f" (tool says {rec['tool'].get('tool_lost')}) cpu {rec['cpu_share']:.0%}")
        oc = rec["other_cpu"]
        if oc["share"] > 0.05:
            extra += f"; machine shared: others used {oc['share']:.0%} of a core {oc['top']}"
        log(f"[{i + 1}/{len(seq)}] {mode:<9} {w['conn_per_s']:>9.0f} conn/s{extra}")
    # ratio: traced conn/s over the mean of the baselines right before and after
    for i, rec in enumerate(out):
        if rec["mode"] != "baseline":
            around = [out[j]["work"]["conn_per_s"] for j in (i - 1, i + 1)
                      if 0 <= j < len(out) and out[j]["mode"] == "baseline"]
            rec["baseline_conn_per_s"] = statistics.mean(around)
            rec["ratio"] = round(rec["work"]["conn_per_s"] / rec["baseline_conn_per_s"], 4)
    return out


# -------------------------------------------------------------------------- collector alone
def collector_cmd(args, sink: str, n: int, checkpoint: int) -> list[str]:
    return [PY, str(BENCH / "collector.py"), "--connections", str(n), "--checkpoint",
            str(checkpoint), "--sink", sink, "--tree", str(args.tree)]


def build_recording(args, n: int) -> dict:
    r = subprocess.run([PY, str(BENCH / "collector.py"), "--connections", str(n), "--build-only",
                        "--tree", str(args.tree)], capture_output=True, text=True, cwd=ROOT)
    if r.returncode:
        raise RuntimeError(f"building the recording failed: {r.stderr[-2000:]}")
    return json.loads(r.stdout)


def time_replay(args, rec: dict) -> dict:
    """`tcptrace-bpf replay FILE --json > /dev/null`: wall time, CPU and peak RSS of the command."""
    err = BUILD / "replay.stderr"
    t0 = time.perf_counter()
    p = subprocess.Popen([PY, "-m", "tcptrace_bpf.cli", "replay", rec["path"], "--json"],
                         cwd=args.tree, stdout=subprocess.DEVNULL, stderr=open(err, "w"))
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    text = err.read_text()
    seen = sum(int(m.group(3)) for m in re.finditer(r"^  (\w+)\s+(\w+)\s+(\d+)$", text, re.M)
               if m.group(1) in PATHS)
    if p.returncode:
        raise RuntimeError(f"replay failed ({p.returncode}): {text[-2000:]}")
    return {"connections": rec["connections"], "records": rec["records"], "seen": seen,
            "elapsed_s": round(wall, 3), "records_per_s": round(rec["records"] / wall, 1),
            "cpu_s": round(ru.ru_utime + ru.ru_stime, 3), "peak_rss_kib": ru.ru_maxrss}


def run_collector(args) -> dict:
    out = {"replay": [], "in_process": []}
    n_full = args.collector_conns
    if (Path(args.tree) / "tcptrace_bpf" / "replay.py").exists():
        for n in (n_full // 10, n_full):
            res = time_replay(args, build_recording(args, n))
            out["replay"].append(res)
            log(f"replay --json of {n} connections: {res['records_per_s']:.0f} records/s, "
                f"peak RSS {res['peak_rss_kib']} KiB")
    for sink in ("prometheus",) if out["replay"] else ("json", "prometheus"):
        r = subprocess.run(collector_cmd(args, sink, n_full, n_full // 10),
                           capture_output=True, text=True, cwd=ROOT)
        if r.returncode:
            raise RuntimeError(f"collector ({sink}) failed: {r.stderr[-2000:]}")
        res = json.loads(r.stdout)
        out["in_process"].append(res)
        log(f"collector {sink}: {res['records_per_s']:.0f} records/s, RSS {res['rss_kib_at']} KiB")
    return out


# -------------------------------------------------------------------------- table
def mib(kib) -> str:
    return "n/a" if kib is None or kib < 0 else f"{kib / 1024:.0f}"


def summarize(windows: list[dict], modes: list[str]) -> dict:
    base = [w["work"]["conn_per_s"] for w in windows if w["mode"] == "baseline"]
    summ = {"baseline": {"n": len(base), "conn_per_s": statistics.mean(base),
                         "min": min(base), "max": max(base)},
            "disturbed_windows": sum(1 for w in windows if w["other_cpu"]["share"] > 0.05),
            "other_cpu_max": max(w["other_cpu"]["share"] for w in windows)}
    for m in modes:
        ws = [w for w in windows if w["mode"] == m]
        if not ws:
            continue
        ratios = [w["ratio"] for w in ws]
        summ[m] = {
            "n": len(ws), "conn_per_s": statistics.mean(w["work"]["conn_per_s"] for w in ws),
            "ratio": statistics.mean(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
            "expected": sum(w["expected"] for w in ws), "seen": sum(w["seen"] for w in ws),
            "lost": sum(w["lost"] for w in ws),
            "runs_with_loss": sum(1 for w in ws if w["lost"] > 0),
            "tool_lost": sum(w["tool"].get("tool_lost") or 0 for w in ws),
            "cpu_share": statistics.mean(w["cpu_share"] for w in ws),
            "peak_rss_kib": max(w["peak_rss_kib"] for w in ws),
            "rss_kib": max(w["rss_kib"] for w in ws),
            "crashed": sum(1 for w in ws if not w["tool"]["alive_at_end"]
                           or not w["tool"]["summary_found"]),
            "killed": sum(1 for w in ws if w["tool"].get("killed_after_sigint")),
        }
    return summ


def table(summ: dict, coll: list[dict], mach: dict, args) -> str:
    b = summ["baseline"]
    L = [f"tcptrace-bpf benchmark: {mach['kernel']}, {mach['cpu']} x{mach['cores']}, bcc "
         f"{mach['bcc']}, Python {mach['python']}, "
         f"{'git ' + mach['git'] if Path(args.tree).resolve() == ROOT else 'tree ' + str(args.tree)}; "
         f"{args.rounds} round(s) x "
         f"{args.duration:g} s windows, churn {args.clients} clients + {args.servers} servers, "
         f"loadavg before {' '.join(mach['loadavg_before'])}; other processes used at most "
         f"{summ['other_cpu_max']:.0%} of a core in a window ({summ['disturbed_windows']} "
         f"window(s) above 5%: {'machine shared, numbers disturbed' if summ['disturbed_windows'] else 'quiet'})",
         "",
         "| mode | conn/s | ratio to baseline (min-max) | handshakes expected | seen | lost | "
         "tool-reported loss | tool CPU (% of 1 core) | peak RSS MiB (end RSS) | goal |",
         "|---|---|---|---|---|---|---|---|---|---|",
         f"| baseline (untraced) | {b['conn_per_s']:,.0f} | 1.00 ({b['min']:,.0f}-{b['max']:,.0f} conn/s, "
         f"{b['n']} windows) | | | | | | | |"]
    labels = {"export": "tcptrace-bpf export", "trace": "tcptrace-bpf trace --json > /dev/null",
              "tcpstates": "bcc tcpstates-bpfcc"}
    for m in args.modes:
        s = summ.get(m)
        if s is None:
            L.append(f"| {labels[m]} | not run | | | | | | | | |")
            continue
        goal = ""
        if m in GOALS:
            ok_ratio = s["ratio"] >= GOALS[m]
            ok_lost = s["lost"] <= 0 and s["tool_lost"] == 0
            goal = (f"ratio >= {GOALS[m]:.2f}: {'met' if ok_ratio else 'NOT met'}; "
                    f"zero lost: {'met' if ok_lost else 'NOT met'}")
        if s["crashed"]:
            goal += f"; tool died before the end in {s['crashed']} run(s)"
        if s.get("killed"):
            goal += f"; did not exit on SIGINT in {s['killed']} run(s) (killed)"
        goal = goal.lstrip("; ")
        pct = 100.0 * s["lost"] / s["expected"] if s["expected"] else 0.0
        L.append(f"| {labels[m]} | {s['conn_per_s']:,.0f} | {s['ratio']:.2f} "
                 f"({s['ratio_min']:.2f}-{s['ratio_max']:.2f}) | {s['expected']:,} | "
                 f"{s['seen']:,} | {s['lost']:,} ({pct:.1f}%, {s['runs_with_loss']} of {s['n']} runs) | "
                 f"{s['tool_lost']:,} | {100 * s['cpu_share']:.0f}% | {mib(s['peak_rss_kib'])} "
                 f"({mib(s['rss_kib'])}) | {goal} |")
    goal_rate = 200_000
    if coll and coll.get("replay"):
        small, full = coll["replay"][0], coll["replay"][-1]
        growth = full["peak_rss_kib"] - small["peak_rss_kib"]
        flat = growth <= max(2048, 0.05 * small["peak_rss_kib"])
        L.append(f"| collector alone: replay FILE --json > /dev/null | "
                 f"{full['records_per_s']:,.0f} records/s ({full['connections']:,} connections, "
                 f"{full['records']:,} records, {full['elapsed_s']:.1f} s incl. start) | | "
                 f"{full['records']:,} | {full['seen']:,} | {full['records'] - full['seen']:,} | 0 | "
                 f"{100 * full['cpu_s'] / full['elapsed_s']:.0f}% | peak RSS {mib(small['peak_rss_kib'])} "
                 f"after {small['connections']:,} conns, {mib(full['peak_rss_kib'])} after "
                 f"{full['connections']:,} ({growth:+} KiB) | >= {goal_rate:,} records/s: "
                 f"{'met' if full['records_per_s'] >= goal_rate else 'NOT met'}; RSS flat: "
                 f"{'met' if flat else 'NOT met'} |")
    for c in (coll or {}).get("in_process", []):
        rss = c["rss_kib_at"]
        ks = sorted(rss, key=int)
        first, last = rss[ks[0]], rss[ks[-1]]
        growth = last - first
        flat = growth <= max(2048, 0.05 * first)
        ok = c["records_per_s"] >= goal_rate
        L.append(f"| collector alone in-process -> {c['sink']} sink | "
                 f"{c['records_per_s']:,.0f} records/s ({c['connections']:,} connections, "
                 f"{c['records']:,} records) | | {c['records']:,} | {c['counted']:,} | "
                 f"{c['records'] - c['counted']:,} | {sum(c['lost'].values())} | 100% | "
                 f"RSS {mib(first)} after {int(ks[0]):,} conns, {mib(last)} after {int(ks[-1]):,} "
                 f"({growth:+} KiB) | >= {goal_rate:,} records/s: {'met' if ok else 'NOT met'}; "
                 f"RSS flat: {'met' if flat else 'NOT met'} |")
    return "\n".join(L)


# -------------------------------------------------------------------------- profile pass
def bpf_progs() -> dict:
    r = subprocess.run(["bpftool", "prog", "show", "--json"], capture_output=True, text=True)
    return {p["id"]: p for p in json.loads(r.stdout or "[]")}


def py_spy_categories(raw_path: Path, expected: float = 0) -> dict:
    """Collapsed stacks -> share of samples by where the leaf-most project frame is."""
    rules = [("json render", ("jsonl.py", "json/", "to_dict")),
             ("prometheus_client", ("prometheus_client",)),
             ("decode (wire.py, ipaddress)", ("wire.py", "ipaddress.py")),
             ("tracker (classify, OpenRecord)", ("tracker.py", "model.py")),
             ("write to stdout", ("cli.py",)),
             ("tcpstates event handler (format, print)", ("tcpstates",)),
             ("ring poll / bcc callback", ("loader.py", "bcc/")),
             ("read recording (recording.py / replay.py)", ("recording.py", "replay.py")),
             ("collector harness (read recording)", ("collector.py",)),
             ("session loop", ("session.py",))]
    tot, cats = 0, {}
    for line in raw_path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        n = int(n)
        tot += n
        frames = stack.split(";")
        cat = "other"
        for fr in reversed(frames):
            hit = next((name for name, pats in rules if any(p in fr for p in pats)), None)
            if hit:
                cat = hit
                break
        cats[cat] = cats.get(cat, 0) + n
    return {"samples": tot,
            # py-spy leaves out idle samples: samples / expected = time runnable or running
            "active_share": round(tot / expected, 3) if expected else None,
            "share": {k: round(v / tot, 3) for k, v in
                                      sorted(cats.items(), key=lambda kv: -kv[1])} if tot else {}}


def _profile_window(args, exe, port, spy, tool, before_ids) -> dict:
    mode = tool.name
    mine = {i: p for i, p in bpf_progs().items() if i not in before_ids}
    pid = tool.proc.pid
    spy_out = BUILD / f"profile-{mode}.txt"
    spy_proc = None
    if spy:
        spy_proc = subprocess.Popen(
            [spy, "record", "--pid", str(pid), "--rate", "200", "--nonblocking",
             "--format", "raw", "--output", str(spy_out), "--duration",
             str(int(args.duration))], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    c0 = cpu_ticks(pid)
    with open(f"/proc/{pid}/stat") as f:
        st0 = f.read().rsplit(")", 1)[1].split()
    work = churn(args, exe, port)
    with open(f"/proc/{pid}/stat") as f:
        st1 = f.read().rsplit(")", 1)[1].split()
    c1 = cpu_ticks(pid)
    after = bpf_progs()
    if spy_proc:
        spy_proc.wait(args.duration + 30)
    wait_idle(pid, 20)
    tres = tool.stop()
    progs = {}
    for i, p0 in mine.items():
        p1 = after.get(i, p0)
        runs = p1.get("run_cnt", 0) - p0.get("run_cnt", 0)
        ns = p1.get("run_time_ns", 0) - p0.get("run_time_ns", 0)
        progs[p0.get("name", str(i))] = {
            "runs": runs, "run_time_ns": ns,
            "ns_per_run": round(ns / runs, 1) if runs else None,
            "runs_per_connection": round(runs / work["connections"], 2)}
    tot_ns = sum(p["run_time_ns"] for p in progs.values())
    return {
        "work": work, "tool": {k: tres.get(k) for k in ("seen", "tool_lost", "tool_lost_by")},
        "bpf": progs,
        "bpf_ns_per_connection": round(tot_ns / work["connections"], 1),
        "bpf_cpu_share": round(tot_ns / 1e9 / work["elapsed_s"], 4),
        "tool_cpu_share": round((c1 - c0) / CLK_TCK / work["elapsed_s"], 4),
        "tool_user_share": round((int(st1[11]) - int(st0[11])) / CLK_TCK / work["elapsed_s"], 4),
        "tool_sys_share": round((int(st1[12]) - int(st0[12])) / CLK_TCK / work["elapsed_s"], 4),
        "py_spy": py_spy_categories(spy_out, 200 * int(args.duration))
        if spy and spy_out.exists() else None}


def profile(args, exe: Path, port: int) -> dict:
    """One window per tool with BPF run-time stats on and py-spy sampling the tool."""
    spy = shutil.which("py-spy", path=str(Path(PY).parent)) or shutil.which("py-spy")
    old = Path("/proc/sys/kernel/bpf_stats_enabled").read_text().strip()
    Path("/proc/sys/kernel/bpf_stats_enabled").write_text("1")
    res = {}
    try:
        for mode in args.modes:
            if args.wait_quiet:
                wait_quiet(args.wait_quiet)
            before_ids = set(bpf_progs())
            tool = TOOLS[mode](args, port)
            tool.start()
            try:
                res[mode] = _profile_window(args, exe, port, spy, tool, before_ids)
            finally:
                if tool.proc.poll() is None:
                    tool.proc.kill()
                    tool.proc.wait()
            log(f"profile {mode}: {json.dumps(res[mode]['bpf'])} "
                f"py-spy {res[mode]['py_spy'] and res[mode]['py_spy']['share']}")
        # the collector alone, under py-spy too
        if spy:
            out = BUILD / "profile-collector.txt"
            n = args.collector_conns // 10
            if (Path(args.tree) / "tcptrace_bpf" / "replay.py").exists():
                target = [PY, "-m", "tcptrace_bpf.cli", "replay", build_recording(args, n)["path"], "--json"]
            else:
                target = collector_cmd(args, "json", n, n)
            subprocess.run([spy, "record", "--rate", "200", "--format", "raw", "--output", str(out),
                            "--", *target],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=args.tree)
            res["collector"] = {"py_spy": py_spy_categories(out) if out.exists() else None}
    finally:
        Path("/proc/sys/kernel/bpf_stats_enabled").write_text(old)
    return res


# -------------------------------------------------------------------------- main
def main() -> int:
    ap = argparse.ArgumentParser(description="tcptrace-bpf connection-churn benchmark")
    ap.add_argument("--quick", action="store_true",
                    help="one round of 2 s windows and a small collector run (smoke test)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per window")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--servers", type=int, default=2)
    ap.add_argument("--modes", default="export,trace,tcpstates")
    ap.add_argument("--collector-conns", type=int, default=1_000_000)
    ap.add_argument("--no-collector", action="store_true")
    ap.add_argument("--profile", action="store_true",
                    help="also one window per tool with bpf_stats and py-spy")
    ap.add_argument("--tree", type=Path, default=ROOT,
                    help="checkout whose tcptrace_bpf/ and bpf/ are measured (default: this one)")
    ap.add_argument("--start-timeout", type=float, default=90.0)
    ap.add_argument("--wait-quiet", type=float, default=0.0,
                    help="before each window, wait up to this many seconds for other processes "
                         "to use < 5%% of a core (a shared machine)")
    ap.add_argument("--retries", type=int, default=0,
                    help="run a window again (up to N times) if other processes used > 5%% of a core")
    ap.add_argument("--json-out", type=Path, default=BUILD / "last-run.json")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.duration, args.collector_conns = 1, 2.0, 40_000
    args.modes = [m for m in args.modes.split(",") if m]
    if os.geteuid() != 0:
        print("bench: must run as root (loads BPF programs)", file=sys.stderr)
        return 1
    BUILD.mkdir(exist_ok=True)
    skipped = {}
    if "tcpstates" in args.modes and not Path(TCPSTATES).exists():
        skipped["tcpstates"] = "bpfcc-tools not installed (make bench installs it)"
        args.modes.remove("tcpstates")
    mach = machine()
    exe = build_churn()
    port = free_port()
    log(f"workload port {port}; machine {mach}")
    windows = run_windows(args, exe, port)
    summ = summarize(windows, args.modes)
    coll = {} if args.no_collector else run_collector(args)
    prof = profile(args, exe, port) if args.profile else None
    for m, why in skipped.items():
        args.modes.append(m)
    text = table(summ, coll, mach, args)
    for m, why in skipped.items():
        text = text.replace("| bcc tcpstates-bpfcc | not run |", f"| bcc tcpstates-bpfcc | not run: {why} |")
    mach["loadavg_after"] = open("/proc/loadavg").read().split()[:3]
    args.json_out.write_text(json.dumps(
        {"machine": mach, "args": {k: str(v) for k, v in vars(args).items()},
         "windows": windows, "summary": summ, "collector": coll, "profile": prof,
         "skipped": skipped, "table": text}, indent=1) + "\n")
    print(text)
    if prof:
        print("\nprofile (bpf_stats, py-spy):\n" + json.dumps(prof, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
