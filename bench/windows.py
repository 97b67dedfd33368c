"""The windows: baseline, export, baseline, trace, baseline, tcpstates, baseline, export, ...
so every traced window has an untraced window right before and right after it, and its ratio
is its conn/s over the mean of those two. A window disturbed by other processes (or by someone
else's tracing BPF programs) is run again, up to --retries times."""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

from bench import log
from bench.host import (CLK_TCK, cpu_ticks, foreign_tracing_progs, other_cpu, proc_ticks,
                        status_kib, wait_idle, wait_quiet)
from bench.tools import TOOLS, Export
from bench.workload import churn


def window(args, exe: Path, mode: str, port: int) -> dict:
    rec = {"mode": mode, "foreign_bpf": foreign_tracing_progs()}
    if mode == "baseline":
        p0 = proc_ticks()
        rec["work"] = churn(args, exe, port)
        rec["other_cpu"] = other_cpu(p0, proc_ticks(), {os.getpid()}, rec["work"]["elapsed_s"])
        return rec
    tool = TOOLS[mode](args, port)
    tool.start()
    try:
        return _traced_window(args, exe, port, tool, rec)
    finally:
        tool.kill()  # interrupted or failed: never leave a tracer behind


def _traced_window(args, exe, port, tool, rec) -> dict:
    rec["start_s"] = tool.start_s  # spawn to ready line
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
    # lines (opens) expected: the workload's two per connection, or none for a filter that
    # matches nothing in the churn (trace-failed, trace-port); lost < 0: opens beyond those
    # (other opens on the host, counted, nothing subtracted)
    rec["expected"] = 2 * rec["work"]["connections"] if tool.expects_workload else 0
    rec["seen"] = rec["tool"]["seen"]
    rec["lost"] = rec["expected"] - rec["seen"]
    return rec


def schedule(rounds: int, modes: list[str]) -> list[str]:
    seq = ["baseline"]
    for _ in range(rounds):
        for m in modes:
            seq += [m, "baseline"]
    return seq


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
                     f" (tool says {rec['tool'].get('tool_lost')}) cpu {rec['cpu_share']:.0%}"
                     f" start {rec['start_s']} s rss {rec['rss_kib']} KiB")
        oc = rec["other_cpu"]
        if oc["share"] > 0.05:
            extra += f"; machine shared: others used {oc['share']:.0%} of a core {oc['top']}"
        log(f"[{i + 1}/{len(seq)}] {mode:<12} {w['conn_per_s']:>9.0f} conn/s{extra}")
    # ratio: traced conn/s over the mean of the baselines right before and after
    for i, rec in enumerate(out):
        if rec["mode"] != "baseline":
            around = [out[j]["work"]["conn_per_s"] for j in (i - 1, i + 1)
                      if 0 <= j < len(out) and out[j]["mode"] == "baseline"]
            rec["baseline_conn_per_s"] = statistics.mean(around)
            rec["ratio"] = round(rec["work"]["conn_per_s"] / rec["baseline_conn_per_s"], 4)
    return out

