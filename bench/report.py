"""The report: the windows summed up per mode, and the markdown table (one row per mode, then
the collector-alone rows) with each goal met or not."""

from __future__ import annotations

import statistics
from pathlib import Path

from bench import ROOT

GOALS = {"export": 0.95, "trace": 0.90}  # ratio to baseline, per mode
COLLECTOR_GOAL = 200_000  # records/s, the collector alone


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


LABELS = {"export": "tcptrace-bpf export", "trace": "tcptrace-bpf trace --json > /dev/null",
          "tcpstates": "bcc tcpstates-bpfcc"}


def table(summ: dict, coll: dict, mach: dict, args) -> str:
    L = _head(summ, mach, args)
    for m in args.modes:
        s = summ.get(m)
        L.append(f"| {LABELS[m]} | not run | | | | | | | | |" if s is None else _tool_row(m, s))
    if coll and coll.get("replay"):
        L.append(_replay_row(coll["replay"][0], coll["replay"][-1]))
    for c in (coll or {}).get("in_process", []):
        L.append(_in_process_row(c))
    return "\n".join(L)


def _head(summ: dict, mach: dict, args) -> list[str]:
    b = summ["baseline"]
    return [f"tcptrace-bpf benchmark: {mach['kernel']}, {mach['cpu']} x{mach['cores']}, bcc "
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


def _tool_row(m: str, s: dict) -> str:
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
    return (f"| {LABELS[m]} | {s['conn_per_s']:,.0f} | {s['ratio']:.2f} "
            f"({s['ratio_min']:.2f}-{s['ratio_max']:.2f}) | {s['expected']:,} | "
            f"{s['seen']:,} | {s['lost']:,} ({pct:.1f}%, {s['runs_with_loss']} of {s['n']} runs) | "
            f"{s['tool_lost']:,} | {100 * s['cpu_share']:.0f}% | {mib(s['peak_rss_kib'])} "
            f"({mib(s['rss_kib'])}) | {goal} |")


def _replay_row(small: dict, full: dict) -> str:
    goal_rate = COLLECTOR_GOAL
    growth = full["peak_rss_kib"] - small["peak_rss_kib"]
    flat = growth <= max(2048, 0.05 * small["peak_rss_kib"])
    return (f"| collector alone: replay FILE --json > /dev/null | "
            f"{full['records_per_s']:,.0f} records/s ({full['connections']:,} connections, "
            f"{full['records']:,} records, {full['elapsed_s']:.1f} s incl. start) | | "
            f"{full['records']:,} | {full['seen']:,} | {full['records'] - full['seen']:,} | 0 | "
            f"{100 * full['cpu_s'] / full['elapsed_s']:.0f}% | peak RSS {mib(small['peak_rss_kib'])} "
            f"after {small['connections']:,} conns, {mib(full['peak_rss_kib'])} after "
            f"{full['connections']:,} ({growth:+} KiB) | >= {goal_rate:,} records/s: "
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
            f"{c['records'] - c['counted']:,} | {sum(c['lost'].values())} | 100% | "
            f"RSS {mib(first)} after {int(ks[0]):,} conns, {mib(last)} after {int(ks[-1]):,} "
            f"({growth:+} KiB) | >= {goal_rate:,} records/s: {'met' if ok else 'NOT met'}; "
            f"RSS flat: {'met' if flat else 'NOT met'} |")
