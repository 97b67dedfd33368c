"""System-wide CPU profile of the churn, untraced and under tcptrace-bpf modes: where the kernel
side's time goes, in microseconds per connection, by class of kernel symbol (the table in
bench/RESULTS.md, "where the kernel side's time goes").

    sudo .venv/bin/python -m bench.sysprof [--duration 8] [--modes trace-failed,export,trace]

The churn saturates both cores, so CPU per connection is cores / conn/s, and a symbol's share
of `perf record -a -e cpu-clock` samples times that is its microseconds per connection. One
window per mode: the untraced rate's window-to-window spread (about +-15% here) stays in the
"everything else" and irq-off rows, which untraced runs have too; the BPF classes (bodies,
maps, probe reads, dispatch, clock) are 0 untraced and repeat within about 0.3 us.
kernel.bpf_stats_enabled is off throughout."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import ROOT
from bench.host import bpf_stats
from bench.tools import TCPTRACE_MODES, TOOLS
from bench.workload import build_churn, churn
from tests.background import free_port

CLASSES = [  # first match wins
    ("BPF program bodies", r"^bpf_prog_[0-9a-f]+_"),
    ("hash maps", r"htab|lookup_nulls_elem|pcpu_freelist"),
    ("probe reads", r"probe_read|copy_from_kernel_nofault"),
    ("dispatch", r"bpf_trace_run|__bpf_trace_|__bpf_prog_enter|__bpf_prog_exit|__cgroup_bpf_run"
                 r"|__bpf_prog_run_save_cb|bpf_skc_to"),
    ("clock reads", r"ktime|read_tsc|pvclock|sched_clock"),
    ("ring buffer", r"ringbuf"),
    ("irq-off spans and spinlocks", r"_raw_spin|queued_spin"),
]


def window(args, mode: str | None, exe: Path, port: int, data: Path) -> dict:
    """perf for one churn window (the tool of `mode`, if any, started and ready first):
    microseconds per connection by kernel symbol."""
    tool = TOOLS[mode](args, port) if mode else None
    if tool:
        tool.start()
    try:
        perf = subprocess.Popen(["perf", "record", "-q", "-a", "-e", "cpu-clock", "-F", "499",
                                 "-o", str(data), "--", "sleep", f"{args.duration:g}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        rate = churn(args, exe, port, args.duration + 1)["conn_per_s"]  # outlasts perf
        if perf.wait(30):
            raise SystemExit(f"sysprof: perf record: {perf.stderr.read().strip()[-300:]}")
    finally:
        if tool:
            tool.stop()
    report = subprocess.run(["perf", "report", "-i", str(data), "--no-children", "--sort", "sym",
                             "-q", "--stdio"], capture_output=True, text=True, check=True).stdout
    us = {}
    for line in report.splitlines():
        m = re.match(r"\s*([\d.]+)%\s+\[.\]\s+(.*)", line)
        if m:
            us[m[2].strip()] = float(m[1]) / 100 * os.cpu_count() * 1e6 / rate
    return {"conn_per_s": rate, "us": us}


def classify(base: dict, run: dict) -> dict:
    b, r = base["us"], run["us"]
    left = set(b) | set(r)
    rows = {"total added": sum(r.values()) - sum(b.values())}
    for name, rx in CLASSES:
        mine = {k for k in left if re.search(rx, k)}
        left -= mine
        rows[name] = sum(r.get(k, 0) - b.get(k, 0) for k in mine)
    rows["everything else"] = sum(r.get(k, 0) - b.get(k, 0) for k in left)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=8.0, help="seconds perf samples per mode")
    ap.add_argument("--modes", default="trace-failed,export,trace",
                    help=f"of {','.join(TCPTRACE_MODES)}")
    args = ap.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    for m in modes:
        if m not in TCPTRACE_MODES:
            ap.error(f"unknown mode {m!r} (modes: {', '.join(TCPTRACE_MODES)})")
    if os.geteuid() != 0:
        print("sysprof: must run as root (perf -a, BPF)", file=sys.stderr)
        return 1
    if not shutil.which("perf"):
        print("sysprof: needs perf (Debian: apt install linux-perf)", file=sys.stderr)
        return 1
    # what bench.tools and bench.workload read (bench/run.py's defaults)
    args.clients, args.servers, args.tree, args.attach, args.start_timeout = \
        4, 2, ROOT, "tracepoint", 90.0
    exe, port = build_churn(), free_port(20000 + os.getpid() % 1000, 32000)
    with tempfile.TemporaryDirectory() as tmp, bpf_stats("0"):
        base = window(args, None, exe, port, Path(tmp) / "untraced.data")
        runs = {m: window(args, m, exe, port, Path(tmp) / f"{m}.data") for m in modes}
    rows = {m: classify(base, r) for m, r in runs.items()}
    print(f"untraced {base['conn_per_s']:,.0f} conn/s = {sum(base['us'].values()):.1f} us/conn; "
          + "; ".join(f"{m} {r['conn_per_s']:,.0f} conn/s" for m, r in runs.items()))
    print("| us per connection, added over untraced | " + " | ".join(modes) + " |")
    print("|---|" + "---|" * len(modes))
    for name in rows[modes[0]]:
        print(f"| {name} | " + " | ".join(f"{rows[m][name]:+.1f}" for m in modes) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
