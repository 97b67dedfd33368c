"""The --profile pass: one window per tool with kernel.bpf_stats_enabled=1 (bpftool prog show:
ns per BPF run, runs per connection) and py-spy sampling the tool (where the Python time goes),
then the collector alone under py-spy."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from bench import BUILD, PY, log
from bench.collector_alone import build_recording, collector_cmd
from bench.host import CLK_TCK, bpf_progs, bpf_stats, cpu_ticks, wait_idle, wait_quiet
from bench.tools import TOOLS
from bench.workload import churn
from tests.background import TOOL


def py_spy_categories(raw_path: Path, expected: float = 0) -> dict:
    """Collapsed stacks -> share of samples by where the leaf-most project frame is."""
    rules = [("json render", ("jsonl.py", "json/", "to_dict")),
             ("prometheus_client", ("prometheus_client",)),
             ("decode (wire.py, ipaddress)", ("wire.py", "ipaddress.py")),
             ("tracker (classify, OpenAttempt)", ("tracker.py", "model.py")),
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
    res = {}
    with bpf_stats("1"):
        for mode in args.modes:
            if args.wait_quiet:
                wait_quiet(args.wait_quiet)
            before_ids = set(bpf_progs())
            tool = TOOLS[mode](args, port)
            tool.start()
            try:
                res[mode] = _profile_window(args, exe, port, spy, tool, before_ids)
            finally:
                tool.kill()
            log(f"profile {mode}: {json.dumps(res[mode]['bpf'])} "
                f"py-spy {res[mode]['py_spy'] and res[mode]['py_spy']['share']}")
        # the collector alone, under py-spy too
        if spy:
            out = BUILD / "profile-collector.txt"
            n = args.collector_conns // 10
            if (Path(args.tree) / "tcptrace_bpf" / "replay.py").exists():
                target = [*TOOL, "replay", build_recording(args, n)["path"], "--json"]
            else:
                target = collector_cmd(args, "json", n, n)
            subprocess.run([spy, "record", "--rate", "200", "--format", "raw", "--output", str(out),
                            "--", *target],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=args.tree)
            res["collector"] = {"py_spy": py_spy_categories(out) if out.exists() else None}
    return res

