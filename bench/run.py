"""Benchmark runner: connection churn untraced and traced, paired and alternated, one table.

    sudo .venv/bin/python bench/run.py [--quick] [--rounds 3] [--duration 10] [--profile]

Order of one run (rounds R, modes export, trace, tcpstates):
    baseline, export, baseline, trace, baseline, tcpstates, baseline, export, ... , baseline
so every traced window has an untraced window right before and right after it; its ratio is
its conn/s over the mean of those two. Each window is one run of bench/churn.c (C clients and
S servers on 127.0.0.1:PORT, RST close), for a fixed duration. A tool is started, and its
ready line awaited, before the workload starts; it is stopped with SIGINT after the workload
has ended and the tool has gone idle (drained), and its own end-of-run counts are read
(tcptrace-bpf: its --summary-json FILE; so --tree needs a checkout that has that flag).

Handshakes expected = 2 x the workload's completed connections (one active, one passive open
each); seen = what the tool reported for the workload's port; lost = expected - seen.
Tool CPU = (utime + stime of the tool process during the window) / window wall time, in % of
one core (the machine has 2). Peak RSS = VmHWM of the tool process at the end of the window
(for tcptrace-bpf and tcpstates that includes bcc's in-process LLVM compile at start); RSS =
VmRSS at the end of the window.

Progress goes to stderr; the table (markdown) to stdout; every number to bench/build/last-run.json.
--profile adds a pass with kernel.bpf_stats_enabled=1 (bpftool prog show: ns per BPF run,
runs per connection) and py-spy on the tool process (where the Python time goes).
The pieces: bench/__init__.py lists the modules.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench and tests, as packages

from bench import BUILD, ROOT, log  # noqa: E402
from bench.collector_alone import run_collector  # noqa: E402
from bench.host import machine  # noqa: E402
from bench.profiling import profile  # noqa: E402
from bench.report import summarize, table  # noqa: E402
from bench.tools import TCPSTATES  # noqa: E402
from bench.windows import run_windows  # noqa: E402
from bench.workload import build_churn  # noqa: E402
from tests.background import free_port  # noqa: E402


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
    # below the ephemeral range, so no client's own port ever collides with it; where in it
    # depends on the pid, so two runs on one host do not race for the same port
    port = free_port(20000 + os.getpid() % 1000, 32000)
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
