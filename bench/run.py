"""Benchmark runner: connection churn untraced and traced, paired and alternated, one table.

    sudo .venv/bin/python bench/run.py [--quick] [--rounds 3] [--duration 10] [--profile]
        [--modes export,trace,trace-failed,trace-port,tcpstates] [--attach tracepoint]
        [--rss-conns 1000000] [--rss-modes export,trace] [--start-reps 3] [--start-modes trace,export]

Order of one run (rounds R, modes export, trace, trace-failed, trace-port, tcpstates):
    baseline, export, baseline, trace, baseline, trace-failed, baseline, trace-port, baseline,
    tcpstates, baseline, export, ... , baseline
so every traced window has an untraced window right before and right after it; its ratio is
its conn/s over the mean of those two. Each window is one run of bench/churn.c (C clients and
S servers on 127.0.0.1:PORT, RST close), for a fixed duration. A tool is started, and its
ready line awaited, before the workload starts; it is stopped with SIGINT after the workload
has ended and the tool has gone idle (drained), and its own end-of-run counts are read
(tcptrace-bpf: its --summary-json FILE; so --tree needs a checkout that has that flag).

Opens expected = 2 x the workload's completed connections (one active, one passive open each),
or 0 for trace-failed (`trace --json --failed`: nothing fails in the churn) and trace-port
(`trace --json --port 1`: nothing uses the port); seen = what the tool showed: export's
tcptrace_handshakes_total, trace's open lines written (its summary's `opens_shown`; older trees:
`opens_total`; unfiltered, so every open on the host counts: the bench's own few are not
subtracted), tcpstates' ESTABLISHED lines for the workload's port; lost = expected - seen.
Tool-reported loss = the summary's lost.ringbuf_full (and every reason, lost_total).
Tool CPU = (utime + stime of the tool process during the window) / window wall time, in % of
one core (the machine has 2). Peak RSS = VmHWM of the tool process at the end of the window
(for tcptrace-bpf and tcpstates that includes bcc's in-process LLVM compile at start); RSS =
VmRSS at the end of the window. Start = spawn to ready line.

Then (issue 13, bench/steady.py): steady RSS, each of --rss-modes started and the churn run
until --rss-conns connections have completed (VmRSS after it has drained), and start to
tracing with --attach auto, --start-reps times per --start-modes command.

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
from bench.host import bpf_stats, machine  # noqa: E402
from bench.profiling import profile  # noqa: E402
from bench.report import LABELS, summarize, table  # noqa: E402
from bench.steady import start_times, steady_rss  # noqa: E402
from bench.tools import TCPSTATES, TCPTRACE_MODES, TOOLS  # noqa: E402
from bench.windows import run_windows  # noqa: E402
from bench.workload import build_churn  # noqa: E402
from tests.background import free_port  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description="tcptrace-bpf connection-churn benchmark")
    ap.add_argument("--quick", action="store_true",
                    help="one round of 2 s windows, small collector and RSS runs, one start "
                         "per command (smoke test)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per window")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--servers", type=int, default=2)
    ap.add_argument("--modes", default="export,trace,trace-failed,trace-port,tcpstates",
                    help=f"windows to run, of {','.join(TOOLS)}")
    ap.add_argument("--attach", default="tracepoint",
                    help="tcptrace-bpf backend in the windows and the RSS runs")
    ap.add_argument("--rss-conns", type=int, default=1_000_000,
                    help="steady RSS: connections the churn completes before VmRSS is read "
                         "(0: no RSS runs)")
    ap.add_argument("--rss-modes", default="export,trace",
                    help="modes measured for steady RSS")
    ap.add_argument("--start-reps", type=int, default=3,
                    help="starts per command with --attach auto (0: none)")
    ap.add_argument("--start-modes", default="trace,export",
                    help="tcptrace-bpf modes whose --attach auto start is timed")
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
        args.rss_conns, args.start_reps = min(args.rss_conns, 50_000), min(args.start_reps, 1)
    args.modes = [m for m in args.modes.split(",") if m]
    args.rss_modes = [m for m in args.rss_modes.split(",") if m] if args.rss_conns > 0 else []
    args.start_modes = ([m for m in args.start_modes.split(",") if m]
                        if args.start_reps > 0 else [])
    for m in (*args.modes, *args.rss_modes):
        if m not in TOOLS:
            ap.error(f"unknown mode {m!r} (modes: {', '.join(TOOLS)})")
    for m in args.start_modes:
        if m not in TCPTRACE_MODES:
            ap.error(f"--start-modes: {m!r} is not a tcptrace-bpf mode ({', '.join(TCPTRACE_MODES)})")
    if os.geteuid() != 0:
        print("bench: must run as root (loads BPF programs)", file=sys.stderr)
        return 1
    BUILD.mkdir(exist_ok=True)
    skipped = {}
    asked = list(args.modes)
    wanted = {*args.modes, *args.rss_modes, *args.start_modes}
    if "tcpstates" in wanted and not Path(TCPSTATES).exists():
        skipped["tcpstates"] = "bpfcc-tools not installed (make bench installs it)"
    cli = Path(args.tree) / "tcptrace_bpf" / "cli.py"
    if ("trace-failed" in wanted and cli.exists()
            and '"--failed"' not in cli.read_text()):  # --tree of a commit before the flag
        skipped["trace-failed"] = f"{args.tree} has no trace --failed"
    for m in skipped:
        for modes in (args.modes, args.rss_modes, args.start_modes):
            if m in modes:
                modes.remove(m)
    mach = machine()
    exe = build_churn()
    # below the ephemeral range, so no client's own port ever collides with it; where in it
    # depends on the pid, so two runs on one host do not race for the same port
    port = free_port(20000 + os.getpid() % 1000, 32000)
    log(f"workload port {port}; machine {mach}")
    with bpf_stats("0") as mach["bpf_stats_enabled_before"]:
        if mach["bpf_stats_enabled_before"]:
            log("kernel.bpf_stats_enabled was on: off for this run, restored after")
        windows = run_windows(args, exe, port)
        summ = summarize(windows, args.modes)
        rss = steady_rss(args, exe, port)
        start = start_times(args, port)
        coll = {} if args.no_collector else run_collector(args)
        prof = profile(args, exe, port) if args.profile else None
    args.modes = asked  # skipped ones too: their rows say why
    text = table(summ, coll, mach, args, rss, start)
    for m, why in skipped.items():
        text = text.replace(f"| {LABELS[m]} | not run |", f"| {LABELS[m]} | not run: {why} |")
    mach["loadavg_after"] = open("/proc/loadavg").read().split()[:3]
    args.json_out.write_text(json.dumps(
        {"machine": mach, "args": {k: str(v) for k, v in vars(args).items()},
         "windows": windows, "summary": summ, "steady_rss": rss, "start": start,
         "collector": coll, "profile": prof,
         "skipped": skipped, "table": text}, indent=1) + "\n")
    print(text)
    if prof:
        print("\nprofile (bpf_stats, py-spy):\n" + json.dumps(prof, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
