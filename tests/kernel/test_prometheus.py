"""The exporter under a real Prometheus: real handshakes of every path, then every PromQL
expression of the dashboard and of the alert rules evaluated through Prometheus's HTTP API."""

import shutil
import signal
import subprocess
import time

import pytest

from tests import promql
from tests.background import TOOL, Background, free_port
from tests.conftest import require
from tests.prometheus_server import PrometheusServer, http_get
from tests.test_deploy_prometheus import fleet_rules

from .conftest import START_TIMEOUT, kernel_ready
from .harness import run_scenario

# every path, and each outcome the alerts watch, at rates above the alert thresholds;
# held_in_syn_sent overflows --max-sockets 64, so lost events are real, not simulated
SCENARIOS = ["normal4", "normal6", "self4", "crossed4", "refused_many", "syn_timeout",
             "syn_timeout", "unreachable", "abort_syn_sent", "port_exhausted4", "held_in_syn_sent",
             # the listener side: accept- and SYN-queue drops, cookies, Fast Open; their ~35
             # opens would bring the refused share near TcptraceRefusedRateHigh's 5 %: refused
             # opens again, so that alert still has its ratio
             "acceptq_syn", "synq_full", "cookies_always", "fastopen", "refused_many"]


class Exporter(Background):
    """`tcptrace-bpf export` in the background, returned once it says it is serving (probes
    attached); with wait=False at once (`started` is set when that line comes)."""

    def __init__(self, *args, wait: bool = True):
        self.port = free_port()
        super().__init__(TOOL + ["export", "--attach", "tracepoint",
                                 "--listen", f"127.0.0.1:{self.port}", *args], "serving http")
        if wait:
            self.wait_started(START_TIMEOUT)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0, wake=None) -> int:
        return super().stop(sig, timeout, wake)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    kernel_ready()
    exp = Exporter("--max-sockets", "64")
    tmp = tmp_path_factory.mktemp("prom")
    shutil.copy(promql.ALERTS, tmp / "alerts.yml")
    (tmp / "prometheus.yml").write_text(f"""global: {{scrape_interval: 1s, evaluation_interval: 1s}}
rule_files: [alerts.yml]
scrape_configs:
  - job_name: tcptrace
    static_configs: [{{targets: ["127.0.0.1:{exp.port}"]}}]
""")
    try:
        prom = PrometheusServer(tmp)
    except BaseException:
        exp.stop()
        raise
    try:
        prom.wait_scrapes("tcptrace")
        for name in SCENARIOS:
            run_scenario(name)
        time.sleep(5)  # a few scrapes after
        yield exp, prom
    finally:
        prom.stop()
        exp.stop()


def test_live_exposition_passes_promtool(stack):
    require(shutil.which("promtool") is not None, "needs promtool")
    exp, _ = stack
    text = http_get(f"http://127.0.0.1:{exp.port}/metrics")
    out = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0, out.stdout + out.stderr
    assert 'tcptrace_build_info{backend="tracepoint",version=' in text


def test_counts_reach_prometheus(stack):
    _, prom = stack
    got = {(r["metric"]["path"], r["metric"]["outcome"]): float(r["value"][1])
           for r in prom.query("sum by (path, outcome) (tcptrace_handshakes_total)")}
    for key in [("self", "established"), ("simultaneous", "established"), ("active", "refused"),
                ("active", "timeout"), ("active", "unreachable"), ("active", "aborted"),
                ("active", "port_exhausted")]:
        assert got[key] >= 1, key
    lost = prom.query('tcptrace_events_lost_total{reason="table_full"}')
    assert float(lost[0]["value"][1]) > 0


@pytest.mark.parametrize("expr", promql.dashboard_exprs())
def test_dashboard_expression_returns_data(stack, expr):
    _, prom = stack
    assert prom.query(promql.concrete(expr)), f"no data: {expr}"


@pytest.mark.parametrize("rule", promql.alert_rules(), ids=lambda r: r["alert"])
def test_alert_expression_fires_for_its_scenario(stack, rule):
    _, prom = stack
    assert prom.query(rule["expr"]), f"{rule['alert']} returned no data: {rule['expr']}"


@pytest.mark.parametrize("rule", fleet_rules(), ids=lambda r: r["record"])
def test_fleet_rule_has_data_from_live_opens(stack, rule):
    _, prom = stack
    got = prom.query(rule["expr"])
    assert got, f"{rule['record']} returned no data: {rule['expr']}"
