"""The report: the windows summed up per mode, and the markdown table (one row per mode, then
the collector-alone rows) with each goal met or not; then the start-time table (--attach auto).
Goals: issue 5 (export ratio, in-process collector) and issue 13 (trace, trace --failed, steady
RSS, start time, replay)."""

from __future__ import annotations

import statistics
from pathlib import Path

from bench import ROOT

GOALS = {"export": 0.95, "trace": 0.90, "trace-failed": 0.95}  # ratio to baseline, per mode
# modes that should write no line at all in the churn (nothing fails, nothing uses the port)
NO_LINES = ("trace-failed", "trace-port")
RSS_GOALS_MIB = {"export": 64, "trace": 96}  # steady RSS after --rss-conns connections
START_GOAL_S = 4.0     # spawn to ready line, --attach auto
REPLAY_GOAL = 300_000  # records/s, replay --json of the 1M-connection recording (issue 13)
COLLECTOR_GOAL = 200_000  # records/s, the collector alone in-process (issue 5)


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
            "runs_with_tool_loss": sum(1 for w in ws if w["tool"].get("tool_lost")),
            "tool_lost_total": sum(w["tool"].get("tool_lost_total") or 0 for w in ws),
            "records_read": (sum(w["tool"]["records_read"] for w in ws)
                             if all(w["tool"].get("records_read") is not None for w in ws)
                             else None),
            "seen_from": sorted({w["tool"].get("seen_from", "lines") for w in ws}),
            "start_s": [w["start_s"] for w in ws],
            "start_median_s": statistics.median(w["start_s"] for w in ws),
            "start_max_s": max(w["start_s"] for w in ws),
            "cpu_share": statistics.mean(w["cpu_share"] for w in ws),
            "peak_rss_kib": max(w["peak_rss_kib"] for w in ws),
            "rss_kib": max(w["rss_kib"] for w in ws),
            "crashed": sum(1 for w in ws if not w["tool"]["alive_at_end"]
                           or not w["tool"]["summary_found"]),
            "killed": sum(1 for w in ws if w["tool"].get("killed_after_sigint")),
        }
    return summ


LABELS = {"export": "tcptrace-bpf export", "trace": "tcptrace-bpf trace --json > /dev/null",
          "trace-failed": "tcptrace-bpf trace --json --failed > /dev/null",
          "trace-port": "tcptrace-bpf trace --json --port 1 > /dev/null",
          "tcpstates": "bcc tcpstates-bpfcc"}
START_LABELS = {"export": "tcptrace-bpf export --attach auto",
                "trace": "tcptrace-bpf trace --attach auto --json",
                "trace-failed": "tcptrace-bpf trace --attach auto --json --failed",
                "trace-port": "tcptrace-bpf trace --attach auto --json --port 1"}
COLUMNS = 12


def table(summ: dict, coll: dict, mach: dict, args, rss: dict = None, start: dict = None) -> str:
    rss, start = rss or {}, start or {}
    L = _head(summ, mach, args)
    for m in args.modes:
        s = summ.get(m)
        L.append(f"| {LABELS[m]} | not run |" + " |" * (COLUMNS - 2) if s is None
                 else _tool_row(m, s, rss.get(m)))
    for m, r in rss.items():  # a mode measured for RSS only
        if m not in args.modes:
            L.append(f"| {LABELS[m]} | (RSS run only) |" + " |" * (COLUMNS - 4)
                     + f" {_rss_cell(r)} | {_rss_goal(m, r)} |")
    if coll and coll.get("replay"):
        L.append(_replay_row(coll["replay"][0], coll["replay"][-1]))
    for c in (coll or {}).get("in_process", []):
        L.append(_in_process_row(c))
    if start:
        L += ["", "Start to tracing: spawn to the ready line on stderr, workload idle (the table "
              "above: the same per mode, with the windows' --attach).",
              "", "| start | runs | median s | max s | backend | goal |",
              "|---|---|---|---|---|---|"]
        for m, r in start.items():
            L.append(_start_row(m, r))
    return "\n".join(L)


def _start_row(m: str, r: dict) -> str:
    if not r["n"]:
        return (f"| {START_LABELS.get(m, m)} | 0 | | | | did not start: "
                f"{r['errors'][-1][-200:] if r['errors'] else '?'} |".replace("\n", " "))
    ok = r["max_s"] <= START_GOAL_S
    return (f"| {START_LABELS.get(m, m)} | {r['n']} | {r['median_s']:.1f} | {r['max_s']:.1f} | "
            f"{r['backend']} | <= {START_GOAL_S:g} s: {'met' if ok else 'NOT met'} |")


def _rss_cell(r: dict) -> str:
    return (f"{mib(r['rss_kib'])} after {r['connections']:,} conns "
            f"(peak {mib(r['peak_rss_kib'])})")


def _rss_goal(m: str, r: dict) -> str:
    if m not in RSS_GOALS_MIB:
        return ""
    g = RSS_GOALS_MIB[m]
    ok = 0 <= r["rss_kib"] <= g * 1024 and r["connections"] >= r["target_connections"]
    return f"steady RSS <= {g} MiB after {r['target_connections']:,} conns: {'met' if ok else 'NOT met'}"


def _head(summ: dict, mach: dict, args) -> list[str]:
    b = summ["baseline"]
    return [f"tcptrace-bpf benchmark: {mach['kernel']}, {mach['cpu']} x{mach['cores']}, bcc "
            f"{mach['bcc']}, Python {mach['python']}, "
            f"{'git ' + mach['git'] if Path(args.tree).resolve() == ROOT else 'tree ' + str(args.tree)}; "
            f"{args.rounds} round(s) x "
            f"{args.duration:g} s windows, churn {args.clients} clients + {args.servers} servers, "
            f"loadavg before {' '.join(mach['loadavg_before'])}"
            f"{'; kernel.bpf_stats_enabled was on, off for the run' if mach.get('bpf_stats_enabled_before') else ''}"
            f"; other processes used at most "
            f"{summ['other_cpu_max']:.0%} of a core in a window ({summ['disturbed_windows']} "
            f"window(s) above 5%: {'machine shared, numbers disturbed' if summ['disturbed_windows'] else 'quiet'})",
            "",
            "| mode | conn/s | ratio to baseline (min-max) | opens expected | seen (lines) | lost | "
            "tool-reported loss: ringbuf_full (all reasons) | tool CPU (% of 1 core) | "
            "start s, median (max) | peak RSS MiB (end RSS) | steady RSS MiB | goal |",
            "|" + "---|" * COLUMNS,
            f"| baseline (untraced) | {b['conn_per_s']:,.0f} | 1.00 ({b['min']:,.0f}-{b['max']:,.0f} conn/s, "
            f"{b['n']} windows) |" + " |" * (COLUMNS - 3)]


def _tool_row(m: str, s: dict, rss: dict = None) -> str:
    goals = []
    zero_lost = s["tool_lost"] == 0 and (m in NO_LINES or s["lost"] <= 0)
    if m in GOALS:
        goals.append(f"ratio >= {GOALS[m]:.2f}: {'met' if s['ratio'] >= GOALS[m] else 'NOT met'}")
    elif m in NO_LINES:
        goals.append("ratio: no target")
    if m in NO_LINES:
        goals.append(f"0 lines: {'met' if s['seen'] == 0 else 'NOT met'}")
    if m in GOALS or m in NO_LINES:
        goals.append(f"zero lost: {'met' if zero_lost else 'NOT met'}")
    if rss and m in RSS_GOALS_MIB:
        goals.append(_rss_goal(m, rss))
    if s["crashed"]:
        goals.append(f"tool died before the end in {s['crashed']} run(s)")
    if s.get("killed"):
        goals.append(f"did not exit on SIGINT in {s['killed']} run(s) (killed)")
    if "opens_total" in s["seen_from"]:
        goals.append("seen = summary opens_total (no opens_shown in this tree)")
    if m in NO_LINES:
        # nothing expected: lines written (and ring records read), and the records lost
        read = f", {s['records_read']:,} records read" if s["records_read"] is not None else ""
        seen = f"{s['seen']:,} lines{read}"
        lost = f"{s['tool_lost']:,} records ({s['runs_with_tool_loss']} of {s['n']} runs)"
    else:
        pct = 100.0 * s["lost"] / s["expected"] if s["expected"] else 0.0
        seen = f"{s['seen']:,}"
        lost = f"{s['lost']:,} ({pct:.1f}%, {s['runs_with_loss']} of {s['n']} runs)"
    return (f"| {LABELS[m]} | {s['conn_per_s']:,.0f} | {s['ratio']:.2f} "
            f"({s['ratio_min']:.2f}-{s['ratio_max']:.2f}) | {s['expected']:,} | {seen} | {lost} | "
            f"{s['tool_lost']:,} ({s['tool_lost_total']:,}) | {100 * s['cpu_share']:.0f}% | "
            f"{s['start_median_s']:.1f} ({s['start_max_s']:.1f}) | {mib(s['peak_rss_kib'])} "
            f"({mib(s['rss_kib'])}) | {_rss_cell(rss) if rss else ''} | {'; '.join(goals)} |")


def _replay_row(small: dict, full: dict) -> str:
    goal_rate = REPLAY_GOAL
    growth = full["peak_rss_kib"] - small["peak_rss_kib"]
    flat = growth <= max(2048, 0.05 * small["peak_rss_kib"])
    return (f"| collector alone: replay FILE --json > /dev/null | "
            f"{full['records_per_s']:,.0f} records/s ({full['connections']:,} connections, "
            f"{full['records']:,} records, {full['elapsed_s']:.1f} s incl. start) | | "
            f"{full['records']:,} | {full['seen']:,} | {full['records'] - full['seen']:,} | 0 | "
            f"{100 * full['cpu_s'] / full['elapsed_s']:.0f}% | | peak RSS {mib(small['peak_rss_kib'])} "
            f"after {small['connections']:,} conns, {mib(full['peak_rss_kib'])} after "
            f"{full['connections']:,} ({growth:+} KiB) | | >= {goal_rate:,} records/s: "
            f"{'met' if full['records_per_s'] >= goal_rate else 'NOT met'}; RSS flat: "
            f"{'met' if flat else 'NOT met'} |")


def _in_process_row(c: dict) -> str:
    goal_rate = COLLECTOR_GOAL
    rss = c["rss_kib_at"]
    ks = sorted(rss, key=int)
    first, last = rss[ks[0]], rss[ks[-1]]
    growth = last - first
    flat = growth <= max(2048, 0.05 * first)
    ok = c["records_per_s"] >= goal_rate
    return (f"| collector alone in-process -> {c['sink']} sink | "
            f"{c['records_per_s']:,.0f} records/s ({c['connections']:,} connections, "
            f"{c['records']:,} records) | | {c['records']:,} | {c['counted']:,} | "
            f"{c['records'] - c['counted']:,} | {sum(c['lost'].values())} | 100% | | "
            f"RSS {mib(first)} after {int(ks[0]):,} conns, {mib(last)} after {int(ks[-1]):,} "
            f"({growth:+} KiB) | | >= {goal_rate:,} records/s: {'met' if ok else 'NOT met'}; "
            f"RSS flat: {'met' if flat else 'NOT met'} |")
