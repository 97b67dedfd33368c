"""The benchmark harness; bench/run.py is its entry point (README: Performance).

    workload.py         bench/churn.c: built once, one run per window
    host.py             /proc readings: CPU ticks, RSS, who else used the machine; the machine
    tools.py            the tracers under test, started and stopped around a window
    windows.py          the alternating baseline / traced windows, each paired with its baselines
    steady.py           steady RSS after N connections, start time with --attach auto (issue 13)
    collector_alone.py  replay and the in-process collector on a synthetic recording
    report.py           summary per mode and the markdown table
    profiling.py        the --profile pass: bpf_stats and py-spy
"""

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
BUILD = BENCH / "build"
PY = sys.executable


def log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)
