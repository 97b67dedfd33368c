"""What /proc and bpftool say about the machine during a window: CPU ticks and memory of a
process, the CPU every other process used (evidence that the machine was shared), tracing BPF
programs someone else loaded, and a description of the machine for the report."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import time

from bench import ROOT

CLK_TCK = os.sysconf("SC_CLK_TCK")
TRACING_TYPES = ("tracepoint", "raw_tracepoint", "kprobe", "tracing", "perf_event")
BPF_STATS = "/proc/sys/kernel/bpf_stats_enabled"


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


def bpf_progs() -> dict:
    r = subprocess.run(["bpftool", "prog", "show", "--json"], capture_output=True, text=True)
    return {p["id"]: p for p in json.loads(r.stdout or "[]")}


def foreign_tracing_progs() -> list[str]:
    """Tracing BPF programs already loaded (someone else's tracer): they run in the workload's
    context and slow it, so a window with any is marked disturbed."""
    return sorted(f"{p.get('name', '?')}#{i}" for i, p in bpf_progs().items()
                  if p.get("type") in TRACING_TYPES)


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


@contextlib.contextmanager
def bpf_stats(value: str):
    """kernel.bpf_stats_enabled set to `value` ("0" or "1") inside, as it was after; yields
    what it found. Off for measuring: left on (by a profiler, or a --profile pass that was
    killed), it reads the clock twice around every BPF program run (measured here at full
    churn: 3% of all CPU samples in the guest's pvclock, charged to the traced rows only).
    On for the --profile pass, which reads ns per run from it."""
    with open(BPF_STATS) as f:
        old = f.read().strip()
    if old != value:
        with open(BPF_STATS, "w") as f:
            f.write(value)
    try:
        yield int(old)
    finally:
        if old != value:
            with open(BPF_STATS, "w") as f:
                f.write(old)
