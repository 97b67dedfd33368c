"""Issue 13's two measurements outside the paired windows:

start   time from spawning a tcptrace-bpf command with `--attach auto` to its ready line on
        stderr ("tracing, Ctrl-C to stop" / "serving http"), on an idle workload, --start-reps
        times per command (median and max). The windows record the same per mode with the
        windows' --attach (the table's start column).
rss     steady RSS: the tool started, then the churn run in chunks of at most RSS_CHUNK_S
        seconds until --rss-conns connections (default 1,000,000; ~20 s at 50k conn/s) have
        completed, VmRSS read after each chunk (export is scraped after each chunk too, as a
        Prometheus would), then after the tool has drained: that last VmRSS is "steady RSS"."""

from __future__ import annotations

import statistics
import time

from bench import log
from bench.host import status_kib, wait_idle, wait_quiet
from bench.tools import TOOLS, Export
from bench.workload import churn

RSS_CHUNK_S = 5.0        # longest churn run between two RSS readings
RSS_FIRST_RATE = 40_000  # conn/s assumed to size the first chunk
RSS_TIME_LIMIT_S = 300.0  # stop churning after this long even if --rss-conns is not reached


def start_times(args, port: int) -> dict:
    out = {}
    for mode in args.start_modes:
        runs, backends, errors = [], set(), []
        for _ in range(args.start_reps):
            if args.wait_quiet:
                wait_quiet(args.wait_quiet)
            tool = TOOLS[mode](args, port, attach="auto")
            try:
                tool.start()
                runs.append(tool.start_s)
                res = tool.stop()
                backends.add(res.get("backend"))
            except RuntimeError as exc:  # did not start: the table says so
                errors.append(str(exc)[-500:])
            finally:
                tool.kill()
        out[mode] = {"attach": "auto", "runs_s": runs, "n": len(runs),
                     "median_s": statistics.median(runs) if runs else None,
                     "max_s": max(runs) if runs else None,
                     "backend": ",".join(sorted(b for b in backends if b)) or None,
                     "errors": errors}
        log(f"start {mode} --attach auto: {runs} s (backend {out[mode]['backend']})")
    return out


def steady_rss(args, exe, port: int) -> dict:
    out = {}
    for mode in args.rss_modes:
        if args.wait_quiet:
            wait_quiet(args.wait_quiet)
        tool = TOOLS[mode](args, port)
        tool.start()
        try:
            out[mode] = _churn_until(args, exe, port, tool)
        finally:
            tool.kill()
        r = out[mode]
        log(f"steady RSS {mode}: {r['rss_kib']} KiB after {r['connections']} connections "
            f"(peak {r['peak_rss_kib']} KiB; samples {r['samples']})")
    return out


def _churn_until(args, exe, port, tool) -> dict:
    pid = tool.proc.pid
    target, conns, rate, samples, runs = args.rss_conns, 0, None, [], 0
    t0 = time.monotonic()
    while conns < target and time.monotonic() - t0 < RSS_TIME_LIMIT_S:
        left = target - conns
        secs = min(RSS_CHUNK_S, max(0.5, left / (rate or RSS_FIRST_RATE)))
        w = churn(args, exe, port, secs)
        conns, rate, runs = conns + w["connections"], w["conn_per_s"] or None, runs + 1
        if isinstance(tool, Export) and tool.proc.poll() is None:
            try:
                tool.scrape()
            except OSError:
                pass
        samples.append([conns, status_kib(pid, "VmRSS")])
    elapsed = time.monotonic() - t0
    drain = wait_idle(pid, 20)
    rec = {"target_connections": target, "connections": conns, "churn_runs": runs,
           "elapsed_s": round(elapsed, 1), "drain_s": drain,
           "rss_kib": status_kib(pid, "VmRSS"), "peak_rss_kib": status_kib(pid, "VmHWM"),
           "samples": samples, "start_s": tool.start_s}
    res = tool.stop()
    rec.update(alive_at_end=res["alive_at_end"], exit_code=res["exit_code"],
               tool_lost=res.get("tool_lost"),
               # opens shown (trace); export's summary counts no opens (the kernel does)
               seen=None if isinstance(tool, Export) else res.get("seen"))
    return rec
