"""Dashboard and alert rules: structure, metric names, promtool."""

import json
import re
import shutil
import subprocess

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest

from tcptrace_bpf.buckets import handshake_buckets
from tcptrace_bpf.sinks.prometheus import HandshakeMetrics, ListenerMetrics, SelfMetrics
from tests import promql
from tests.conftest import require

# The listener-side metrics (issue 12's contract names): the "Listeners" row and the listener
# alerts use them; test_listener_contract_is_served holds the exporter to every one.
LISTENER_CONTRACT = {
    "tcptrace_listen_drops_total",           # {port, reason}
    "tcptrace_syncookies_sent_total",        # {port}
    "tcptrace_listen_queue_length",          # {port, queue}
    "tcptrace_listen_queue_limit",           # {port}
    "tcptrace_handshakes_flagged_total",     # {path, flag}
    "tcptrace_listener_ports_folded_total",  # no label
}
LISTENER_ALERTS = {"TcptraceListenAcceptQueueOverflow", "TcptraceListenSynQueueDrops",
                   "TcptraceSynCookiesInUse"}
SEVERITIES = {"info", "warning", "critical"}
SELECTOR = re.compile(r"\b(tcptrace_[a-z_]+)\b(\{[^}]*\})?")
BY = re.compile(r"\bby\s*\(([^)]*)\)")


def served_names() -> set[str]:
    """Every sample name the exporter serves (a fresh registry, nothing observed yet), and
    every counter or gauge it declares (`# TYPE`), even one with no sample yet (a series
    per listening port exists only once a port was seen)."""
    reg = CollectorRegistry()
    reg.register(HandshakeMetrics(handshake_buckets(6, 5, 4)))
    reg.register(SelfMetrics("0", "tracepoint", lambda: {}, lambda: 0))
    reg.register(ListenerMetrics(dict, list))
    text = generate_latest(reg).decode()
    names = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if not line.startswith("#")}
    for line in text.splitlines():
        match = re.fullmatch(r"# TYPE (\S+) (counter|gauge)", line)
        if match:
            names.add(match.group(1))
    return names


def known_names() -> set[str]:
    return served_names()


def test_listener_contract_is_served():
    assert LISTENER_CONTRACT <= served_names()


def by_labels(expr: str) -> set[str]:
    return {label.strip() for clause in BY.findall(expr) for label in clause.split(",")
            if label.strip()}


def row_panels(dash: dict, title: str) -> list[dict]:
    """The panels of an expanded row: those after it, up to the next row."""
    out, inside = [], False
    for p in dash["panels"]:
        if p.get("type") == "row":
            inside = p["title"] == title
            out.extend(p.get("panels", []) if inside else [])
        elif inside:
            out.append(p)
    return out


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
        assert all(t["datasource"]["uid"] == "${datasource}" for t in p["targets"]), p["title"]
        if p["type"] in ("timeseries", "gauge", "stat"):
            assert p["fieldConfig"]["defaults"].get("unit"), p["title"]
    kinds = {p["type"] for p in panels}
    assert "heatmap" in kinds


def test_panel_ids_unique_and_grid_without_overlap():
    dash = json.loads(promql.DASHBOARD.read_text())
    panels = list(promql.panels(dash))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), sorted(ids)
    cells = {}
    for p in panels:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = p["title"]


def test_every_selector_filters_instance_and_rates_use_rate_interval():
    for expr in promql.dashboard_exprs():
        for name, labels in SELECTOR.findall(expr):
            assert 'instance=~"$instance"' in labels, f"{name} without the instance filter: {expr}"
        for window in re.findall(r"\[([^\]]*)\]", expr):
            assert window == "$__rate_interval", expr


def test_listeners_row():
    dash = json.loads(promql.DASHBOARD.read_text())
    (row,) = [p for p in dash["panels"] if p.get("type") == "row" and p["title"] == "Listeners"]
    panels = {p["title"]: p for p in row_panels(dash, "Listeners")}
    want = {  # title: (metric names, unit)
        "Listen drops by port and reason": ({"tcptrace_listen_drops_total"}, "ops"),
        "Accept queue fill by port": ({"tcptrace_listen_queue_length", "tcptrace_listen_queue_limit"},
                                      "percentunit"),
        "SYN queue length by port": ({"tcptrace_listen_queue_length"}, "short"),
        "SYN cookies sent by port": ({"tcptrace_syncookies_sent_total"}, "ops"),
        "Flagged handshakes": ({"tcptrace_handshakes_flagged_total"}, "ops"),
    }
    assert set(panels) == set(want)
    for title, (names, unit) in want.items():
        p = panels[title]
        exprs = [t["expr"] for t in p["targets"]]
        assert set().union(*map(promql.metric_names, exprs)) == names, title
        assert p["fieldConfig"]["defaults"]["unit"] == unit, title
        assert p["gridPos"]["y"] > row["gridPos"]["y"], title
    assert 'queue="accept"' in panels["Accept queue fill by port"]["targets"][0]["expr"]
    assert 'queue="syn"' in panels["SYN queue length by port"]["targets"][0]["expr"]


def test_every_metric_used_is_served():
    names = known_names()
    used = set()
    for expr in promql.dashboard_exprs() + [r["expr"] for r in promql.alert_rules()]:
        used |= promql.metric_names(expr)
    assert used, "no tcptrace_ metric used"
    assert used <= names, f"not served: {sorted(used - names)}"


def test_alerts_cover_the_contract():
    names = {r["alert"] for r in promql.alert_rules()}
    assert {"TcptraceSelfConnectSeen", "TcptraceSimultaneousOpenSeen", "TcptraceRefusedRateHigh",
            "TcptraceTimeoutRateHigh", "TcptracePortExhaustion", "TcptraceEventsLost"} <= names
    assert LISTENER_ALERTS <= names


@pytest.mark.parametrize("rule", promql.alert_rules(), ids=lambda r: r["alert"])
def test_alert_shape(rule):
    assert rule["labels"]["severity"] in SEVERITIES
    assert set(rule["annotations"]) == {"summary", "description"}
    kept = by_labels(rule["expr"])
    assert "without" not in rule["expr"]
    want = {"instance", "port"} if rule["alert"] in LISTENER_ALERTS else {"instance"}
    assert kept == want, kept
    for text in rule["annotations"].values():
        for label in want:
            assert "$labels." + label in text, (label, text)


def test_every_alert_is_unit_tested():
    """Each alert fires in some case and stays silent in another, and every firing case
    spells out exactly the labels the rule gives (its `by` labels and severity)."""
    doc = yaml.safe_load((promql.DASHBOARDS / "alerts_test.yml").read_text())
    assert doc["rule_files"] == [promql.ALERTS.name]
    cases = [t for case in doc["tests"] for t in case.get("alert_rule_test", [])]
    for rule in promql.alert_rules():
        mine = [t for t in cases if t["alertname"] == rule["alert"]]
        fired = [a for t in mine for a in t["exp_alerts"]]
        assert fired, f"{rule['alert']}: no case where it fires"
        assert any(not t["exp_alerts"] for t in mine), f"{rule['alert']}: no silent case"
        for alert in fired:
            assert set(alert["exp_labels"]) == by_labels(rule["expr"]) | {"severity"}, rule["alert"]
            assert alert["exp_labels"]["severity"] == rule["labels"]["severity"]
            assert set(alert["exp_annotations"]) == {"summary", "description"}


@pytest.mark.parametrize("args", [["check", "rules", "alerts.yml"],
                                  ["test", "rules", "alerts_test.yml"]])
def test_promtool(args):
    require(shutil.which("promtool") is not None, "needs promtool (Debian package prometheus)")
    out = subprocess.run(["promtool", *args], cwd=promql.DASHBOARDS, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def promtool_in(tmp_path, *args) -> subprocess.CompletedProcess:
    require(shutil.which("promtool") is not None, "needs promtool (Debian package prometheus)")
    return subprocess.run(["promtool", *args], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60)


def test_dashboard_exprs_parse(tmp_path):
    """Every panel query, with Grafana's variables filled in, is valid PromQL."""
    rules = [{"record": f"panel:query:{i}", "expr": promql.concrete(e)}
             for i, e in enumerate(promql.dashboard_exprs())]
    (tmp_path / "panels.yml").write_text(yaml.safe_dump({"groups": [{"name": "panels",
                                                                       "rules": rules}]}))
    out = promtool_in(tmp_path, "check", "rules", "panels.yml")
    assert out.returncode == 0, out.stdout + out.stderr


# Listener series of two hosts, every 15 s (a 1m $__rate_interval then holds 4-5 samples).
# host-a: port 443 with half its accept queue used and 7 half-open requests, port 8080 with
# listen(fd, 0) (limit 0: no fill ratio), drops on a folded port ("other").
# host-b: port 443 past its limit (the kernel lets the queue reach limit + 1).
LISTENER_SERIES = {
    # per 15 s
    'tcptrace_listen_drops_total{instance="host-a:9725",port="443",reason="accept_queue_full"}': "0+15x40",
    'tcptrace_listen_drops_total{instance="host-a:9725",port="443",reason="syn_queue_full"}': "0x40",
    'tcptrace_listen_drops_total{instance="host-a:9725",port="other",reason="other"}': "0+3x40",
    'tcptrace_listen_drops_total{instance="host-b:9725",port="443",reason="accept_queue_full"}': "0+7.5x40",
    'tcptrace_listen_queue_length{instance="host-a:9725",port="443",queue="accept"}': "50x40",
    'tcptrace_listen_queue_length{instance="host-a:9725",port="443",queue="syn"}': "7x40",
    'tcptrace_listen_queue_length{instance="host-a:9725",port="8080",queue="accept"}': "1x40",
    'tcptrace_listen_queue_length{instance="host-a:9725",port="8080",queue="syn"}': "0x40",
    'tcptrace_listen_queue_length{instance="host-b:9725",port="443",queue="accept"}': "129x40",
    'tcptrace_listen_queue_length{instance="host-b:9725",port="443",queue="syn"}': "0x40",
    'tcptrace_listen_queue_limit{instance="host-a:9725",port="443"}': "100x40",
    'tcptrace_listen_queue_limit{instance="host-a:9725",port="8080"}': "0x40",
    'tcptrace_listen_queue_limit{instance="host-b:9725",port="443"}': "128x40",
    'tcptrace_syncookies_sent_total{instance="host-a:9725",port="443"}': "0+30x40",
    'tcptrace_syncookies_sent_total{instance="host-a:9725",port="8080"}': "0x40",
    'tcptrace_syncookies_sent_total{instance="host-b:9725",port="443"}': "0x40",
    'tcptrace_handshakes_flagged_total{instance="host-a:9725",path="passive",flag="syncookie"}': "0+15x40",
    'tcptrace_handshakes_flagged_total{instance="host-a:9725",path="passive",flag="fastopen"}': "0x40",
    'tcptrace_handshakes_flagged_total{instance="host-a:9725",path="active",flag="fastopen"}': "0+7.5x40",
    'tcptrace_handshakes_flagged_total{instance="host-b:9725",path="active",flag="fastopen"}': "0+3.75x40",
    'tcptrace_listener_ports_folded_total{instance="host-a:9725"}': "0+1x40",
}
LISTENER_PANELS = {  # title: {result labels: value}
    "Listen drops by port and reason": {
        '{port="443",reason="accept_queue_full"}': 1.5,
        '{port="443",reason="syn_queue_full"}': 0,
        '{port="other",reason="other"}': 0.2},
    "Accept queue fill by port": {
        '{instance="host-a:9725",port="443"}': 0.5,
        '{instance="host-b:9725",port="443"}': 129 / 128},
    "SYN queue length by port": {
        '{instance="host-a:9725",port="443"}': 7,
        '{instance="host-a:9725",port="8080"}': 0,
        '{instance="host-b:9725",port="443"}': 0},
    "SYN cookies sent by port": {
        '{port="443"}': 2,
        '{port="8080"}': 0},
    "Flagged handshakes": {
        '{path="passive",flag="syncookie"}': 1,
        '{path="passive",flag="fastopen"}': 0,
        '{path="active",flag="fastopen"}': 0.75},
}


def test_listener_panels_compute(tmp_path):
    """The Listeners row's queries on listener series of the contract's shape, evaluated by
    promtool: the sums, the fill ratio (limit 0 left out, past 100% shown) and the rates."""
    dash = json.loads(promql.DASHBOARD.read_text())
    panels = {p["title"]: p for p in row_panels(dash, "Listeners")}
    assert set(panels) == set(LISTENER_PANELS)
    series = [{"series": s.replace("{", '{job="tcptrace",', 1), "values": v}
              for s, v in LISTENER_SERIES.items()]
    tests = [{"eval_time": "10m", "expr": promql.concrete(t["expr"]),
              "exp_samples": [{"labels": labels, "value": value}
                              for labels, value in LISTENER_PANELS[title].items()]}
             for title, p in panels.items() for t in p["targets"]]
    (tmp_path / "panels_test.yml").write_text(yaml.safe_dump({
        "rule_files": [], "evaluation_interval": "1m",
        "tests": [{"interval": "15s", "input_series": series, "promql_expr_test": tests}]}))
    out = promtool_in(tmp_path, "test", "rules", "panels_test.yml")
    assert out.returncode == 0, out.stdout + out.stderr
