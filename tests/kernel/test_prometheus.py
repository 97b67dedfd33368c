"""The exporter under a real Prometheus: real handshakes of every path, then every PromQL
expression of the dashboard and of the alert rules evaluated through Prometheus's HTTP API."""

import json
import shutil
import signal
import subprocess
import time
import urllib.parse
import urllib.request

import pytest

from tests import promql
from tests.background import TOOL, Background, free_port
from tests.conftest import require

from .conftest import START_TIMEOUT, kernel_ready
from .harness import run_scenario

# every path, and each outcome the alerts watch, at rates above the alert thresholds;
# held_in_syn_sent overflows --max-sockets 64, so lost events are real, not simulated
SCENARIOS = ["normal4", "normal6", "self4", "crossed4", "refused_many", "syn_timeout",
             "syn_timeout", "unreachable", "abort_syn_sent", "held_in_syn_sent"]


def http_get(url: str, timeout: float = 10) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


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
    require(shutil.which("prometheus") is not None, "needs prometheus (Debian package)")
    exp = Exporter("--max-sockets", "64")
    tmp = tmp_path_factory.mktemp("prom")
    shutil.copy(promql.ALERTS, tmp / "alerts.yml")
    (tmp / "prometheus.yml").write_text(f"""global: {{scrape_interval: 1s, evaluation_interval: 1s}}
rule_files: [alerts.yml]
scrape_configs:
  - job_name: tcptrace
    static_configs: [{{targets: ["127.0.0.1:{exp.port}"]}}]
""")
    pport = free_port()
    prom = subprocess.Popen(["prometheus", f"--config.file={tmp / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp / 'data'}",
                             f"--web.listen-address=127.0.0.1:{pport}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{pport}"
    for _ in range(100):
        try:
            http_get(base + "/-/ready", 1)
            break
        except OSError:
            time.sleep(0.2)
    # Prometheus hands targets to scrapers up to 5 s after start: wait for real scrapes of
    # the all-zero series, so that increases start from zero
    for _ in range(150):
        try:
            if query(base, 'count_over_time(up{job="tcptrace"}[1m]) >= 2'):
                break
        except (OSError, AssertionError):
            pass
        time.sleep(0.2)
    else:
        raise RuntimeError("prometheus never scraped the exporter")
    for name in SCENARIOS:
        run_scenario(name)
    time.sleep(5)  # a few scrapes after
    yield exp, base
    prom.terminate()
    prom.wait(30)
    exp.stop()


def query(base: str, expr: str) -> list:
    url = base + "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    doc = json.loads(http_get(url))
    assert doc["status"] == "success", doc
    return doc["data"]["result"]


def test_live_exposition_passes_promtool(stack):
    require(shutil.which("promtool") is not None, "needs promtool")
    exp, _ = stack
    text = http_get(f"http://127.0.0.1:{exp.port}/metrics")
    out = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0, out.stdout + out.stderr
    assert 'tcptrace_build_info{backend="tracepoint",version=' in text


def test_counts_reach_prometheus(stack):
    _, base = stack
    got = {(r["metric"]["path"], r["metric"]["outcome"]): float(r["value"][1])
           for r in query(base, "sum by (path, outcome) (tcptrace_handshakes_total)")}
    for key in [("self", "established"), ("simultaneous", "established"), ("active", "refused"),
                ("active", "timeout"), ("active", "unreachable"), ("active", "aborted")]:
        assert got[key] >= 1, key
    lost = query(base, 'tcptrace_events_lost_total{reason="table_full"}')
    assert float(lost[0]["value"][1]) > 0


@pytest.mark.parametrize("expr", promql.dashboard_exprs())
def test_dashboard_expression_returns_data(stack, expr):
    _, base = stack
    assert query(base, promql.concrete(expr)), f"no data: {expr}"


@pytest.mark.parametrize("rule", promql.alert_rules(), ids=lambda r: r["alert"])
def test_alert_expression_fires_for_its_scenario(stack, rule):
    _, base = stack
    assert query(base, rule["expr"]), f"{rule['alert']} returned no data: {rule['expr']}"
