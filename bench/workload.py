"""The workload: bench/churn.c (C clients and S servers on 127.0.0.1:PORT, RST close), built
once and run once per window for a fixed duration; it prints its own counts as JSON."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from bench import BENCH, BUILD


def build_churn() -> Path:
    BUILD.mkdir(exist_ok=True)
    exe, src = BUILD / "churn", BENCH / "churn.c"
    if not exe.exists() or exe.stat().st_mtime < src.stat().st_mtime:
        subprocess.run(["gcc", "-O2", "-Wall", "-o", str(exe), str(src)], check=True)
    return exe


def churn(args, exe: Path, port: int, duration: float = 0.0) -> dict:
    """One run of churn for `duration` seconds (default: a window, --duration)."""
    duration = duration or args.duration
    r = subprocess.run([str(exe), "-d", f"{duration:g}", "-c", str(args.clients),
                        "-s", str(args.servers), "-p", str(port)],
                       capture_output=True, text=True, timeout=duration + 60)
    if r.returncode:
        raise RuntimeError(f"churn failed: {r.stderr}")
    return json.loads(r.stdout)

