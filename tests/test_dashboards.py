"""Dashboard and alert rules: structure, metric names, promtool."""

import json
import shutil
import subprocess

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from tcptrace_bpf.buckets import handshake_buckets
from tcptrace_bpf.sinks.prometheus import HandshakeMetrics, SelfMetrics
from tests import promql
from tests.conftest import require


def served_names() -> set[str]:
    """Every sample name the exporter serves (a fresh registry, nothing observed yet)."""
    reg = CollectorRegistry()
    reg.register(HandshakeMetrics(handshake_buckets(6, 5, 4)))
    reg.register(SelfMetrics("0", "tracepoint", lambda: {}, lambda: 0))
    text = generate_latest(reg).decode()
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if not line.startswith("#")}


def test_dashboard_structure():
    dash = json.loads(promql.DASHBOARD.read_text())
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = list(promql.panels(dash))
    assert len(panels) >= 8
    for p in panels:
        if p.get("type") == "row":
            continue
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        assert p["targets"] and all(t["expr"] and t["refId"] for t in p["targets"]), p["title"]
    kinds = {p["type"] for p in panels}
    assert "heatmap" in kinds


def test_every_metric_used_is_served():
    names = served_names()
    used = set()
    for expr in promql.dashboard_exprs() + [r["expr"] for r in promql.alert_rules()]:
        used |= promql.metric_names(expr)
    assert used, "no tcptrace_ metric used"
    assert used <= names, f"not served: {sorted(used - names)}"


def test_alerts_cover_the_contract():
    names = {r["alert"] for r in promql.alert_rules()}
    assert {"TcptraceSelfConnectSeen", "TcptraceSimultaneousOpenSeen", "TcptraceRefusedRateHigh",
            "TcptraceTimeoutRateHigh", "TcptraceEventsLost"} <= names


@pytest.mark.parametrize("args", [["check", "rules", "alerts.yml"],
                                  ["test", "rules", "alerts_test.yml"]])
def test_promtool(args):
    require(shutil.which("promtool") is not None, "needs promtool (Debian package prometheus)")
    out = subprocess.run(["promtool", *args], cwd=promql.DASHBOARDS, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
