"""The collector alone, no kernel: a synthetic recording of N connections (bench/collector.py
builds it) timed through `tcptrace-bpf replay FILE --json > /dev/null`, and fed in-process
through the tracker and a sink (bench/collector.py, RSS at checkpoints)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from bench import BENCH, BUILD, PY, ROOT, log
from tests.background import TOOL


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
    """`tcptrace-bpf replay FILE --json > /dev/null`: wall time, CPU and peak RSS of the command
    (its rusage: os.wait4), and the opens its --summary-json counted."""
    err, summary = BUILD / "replay.stderr", BUILD / "replay.summary.json"
    summary.unlink(missing_ok=True)
    t0 = time.perf_counter()
    with open(err, "w") as err_file:
        p = subprocess.Popen([*TOOL, "replay", rec["path"], "--json", "--summary-json", str(summary)],
                             cwd=args.tree, stdout=subprocess.DEVNULL, stderr=err_file)
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode:
        raise RuntimeError(f"replay failed ({p.returncode}): {err.read_text()[-2000:]}")
    seen = json.loads(summary.read_text())["opens_total"]
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

