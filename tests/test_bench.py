"""Smoke test of the benchmark harness (`make bench`, issue 5): the quick mode runs end to end
against the real kernel and prints every row with well-formed numbers. Correctness only:
speed is what the benchmark reports, never asserted here."""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from tests.background import ROOT
from tests.conftest import require

ROWS = ("baseline (untraced)", "tcptrace-bpf export", "tcptrace-bpf trace --json > /dev/null",
        "bcc tcpstates-bpfcc", "collector alone: replay FILE --json > /dev/null",
        "collector alone in-process -> prometheus sink")
INT = r"-?\d{1,3}(?:,\d{3})*"


@pytest.mark.kernel
def test_quick_bench_prints_every_row_with_well_formed_numbers(tmp_path):
    require(os.geteuid() == 0, "needs root")
    require(shutil.which("gcc") is not None, "needs gcc (bench/churn.c)")
    try:
        import bcc  # noqa: F401
    except ImportError:
        require(False, "needs bcc (python3-bpfcc)")

    out = tmp_path / "run.json"
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--quick",
                        "--json-out", str(out)], cwd=ROOT, capture_output=True, text=True,
                       timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    table = r.stdout
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in table.splitlines() if line.startswith("| ") and "---" not in line}
    for name in ROWS:
        assert name in rows, f"row {name!r} missing from:\n{table}"

    doc = json.loads(out.read_text())
    tcpstates_ran = "tcpstates" not in doc["skipped"]
    if not tcpstates_ran:
        assert rows["bcc tcpstates-bpfcc"][0].startswith("not run: bpfcc-tools not installed")

    assert re.fullmatch(INT, rows["baseline (untraced)"][0])
    for name in ROWS[1:4]:
        if name == "bcc tcpstates-bpfcc" and not tcpstates_ran:
            continue
        conn, ratio, expected, seen, lost, tool_lost, cpu, rss = rows[name][:8]
        assert re.fullmatch(INT, conn), (name, conn)
        assert re.fullmatch(r"\d+\.\d\d \(\d+\.\d\d-\d+\.\d\d\)", ratio), (name, ratio)
        assert re.fullmatch(INT, expected) and re.fullmatch(INT, seen), (name, expected, seen)
        assert re.fullmatch(INT + r" \(-?\d+\.\d%, \d+ of \d+ runs\)", lost), (name, lost)
        assert re.fullmatch(INT, tool_lost), (name, tool_lost)
        assert re.fullmatch(r"\d+%", cpu), (name, cpu)
        assert re.fullmatch(r"\d+ \(\d+\)", rss), (name, rss)

    modes = {"export", "trace"} | ({"tcpstates"} if tcpstates_ran else set())
    windows = doc["windows"]
    assert [w["mode"] for w in windows] == ["baseline", "export", "baseline", "trace", "baseline",
                                            "tcpstates", "baseline"][:len(windows)]
    assert {w["mode"] for w in windows} == modes | {"baseline"}
    for w in windows:
        assert w["work"]["connections"] > 0 and w["work"]["conn_per_s"] > 0
        if w["mode"] == "baseline":
            continue
        assert w["tool"]["alive_at_end"], w["tool"]
        if w["mode"] in ("export", "trace"):
            assert w["tool"]["exit_code"] == 0 and not w["tool"]["killed_after_sigint"], w["tool"]
        assert w["expected"] == 2 * w["work"]["connections"]
        for key in ("expected", "seen", "lost"):
            assert isinstance(w[key], int), (w["mode"], key, w[key])
        assert isinstance(w["tool"]["tool_lost"], int)
        assert w["lost"] == w["expected"] - w["seen"]
        assert w["ratio"] > 0 and 0 <= w["cpu_share"] < os.cpu_count() + 0.5
        assert w["peak_rss_kib"] > 0
        if w["mode"] in ("export", "trace"):
            # nothing is lost silently: every handshake not seen is in the tool's own loss count
            assert w["tool"]["summary_found"]
            assert w["lost"] <= w["tool"]["tool_lost"], w

    for c in doc["collector"]["replay"]:
        assert c["seen"] == c["records"] and c["records_per_s"] > 0 and c["peak_rss_kib"] > 0
    for c in doc["collector"]["in_process"]:
        assert c["records"] == 2 * c["connections"] and c["records_per_s"] > 0
        assert all(isinstance(v, int) and v > 0 for v in c["rss_kib_at"].values())
