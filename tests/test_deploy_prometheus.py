"""deploy/prometheus: the scrape configs and the fleet recording rules.

promtool checks both configs and the rules and runs the rules' unit tests (and fails on a
wrong expected value, a broken expression, a missing rules file). A real Prometheus then
loads scrape-kubernetes.yml and fleet-rules.yml, with the Kubernetes discovery replaced by
static targets that carry the labels discovery would give, and scrapes `replay --listen`:
the relabelling keeps one target, every rule is evaluated there, and /federate serves the
recorded series. No kernel needed."""

import json
import re
import shutil
import signal
import subprocess
import time
import urllib.parse

import pytest
import yaml

from tcptrace_bpf.model import OpenPath, Outcome
from tests.background import ROOT, TOOL, Background, free_port
from tests.conftest import require
from tests.prometheus_server import PrometheusServer, http_get
from tests.test_dashboards import served_names
from tests.test_recording import RECORDINGS

DEPLOY = ROOT / "deploy" / "prometheus"
RULES = DEPLOY / "fleet-rules.yml"
RULES_TEST = DEPLOY / "fleet-rules_test.yml"
STATIC = DEPLOY / "scrape-static.yml"
KUBERNETES = DEPLOY / "scrape-kubernetes.yml"
# labels a fleet rule may keep: none grows with connections, addresses or pods
BOUNDED = {"job", "instance", "path", "outcome", "reason", "le", "port", "version", "backend"}
# Debian builds Prometheus without Kubernetes discovery (removed in its packaging)
NO_KUBERNETES_SD = "field kubernetes_sd_configs not found"
METRIC = re.compile(r"\b(tcptrace_[a-z_]+)\b")


def fleet_rules() -> list[dict]:
    doc = yaml.safe_load(RULES.read_text())
    return [r for g in doc["groups"] for r in g["rules"]]


def promtool(*args, cwd=DEPLOY) -> subprocess.CompletedProcess:
    require(shutil.which("promtool") is not None, "needs promtool (Debian package prometheus)")
    return subprocess.run(["promtool", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60)


def ok(out: subprocess.CompletedProcess) -> str:
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout + out.stderr


def failed(out: subprocess.CompletedProcess) -> str:
    assert out.returncode != 0, out.stdout + out.stderr
    return out.stdout + out.stderr


def without_kubernetes_sd(cfg: dict, static_configs: list) -> dict:
    """The config with the tcptrace job's discovery replaced by static targets."""
    job = cfg["scrape_configs"][0]
    del job["kubernetes_sd_configs"]
    job["static_configs"] = static_configs
    return cfg


def static_tls_variant() -> str:
    """scrape-static.yml with its commented HTTPS + basic-auth job in place of the plain one."""
    text = STATIC.read_text()
    head, marker, tail = text.partition("  # - job_name: tcptrace\n")
    assert marker, "the commented TLS job is gone"
    job = "\n".join(re.sub(r"^  # ?", "  ", line)
                    for line in (marker + tail).splitlines() if line.startswith("  #"))
    return head[:head.index("  - job_name: tcptrace")] + job + "\n"


# --- structure ------------------------------------------------------------------------

def test_rule_names_follow_level_metric_operations():
    records = [r["record"] for r in fleet_rules()]
    assert len(records) == len(set(records))
    for name in records:
        assert re.fullmatch(r"(job|instance):tcptrace_[a-z0-9_]+:[a-z0-9_]+", name), name
        assert not name.split(":")[1].endswith("_total"), name
    assert {"job:tcptrace_handshakes:rate5m", "job:tcptrace_handshake_failures:rate5m",
            "job:tcptrace_handshake_failures:ratio_rate5m",
            "instance:tcptrace_handshake_failures:rate5m", "job:tcptrace_syn_retransmits:rate5m",
            "job:tcptrace_events_lost:rate5m", "job:tcptrace_handshake_duration_seconds:p99_rate5m",
            "job:tcptrace_listen_drops:rate5m"} <= set(records)


@pytest.mark.parametrize("rule", fleet_rules(), ids=lambda r: r["record"])
def test_rule_keeps_a_bounded_label_set(rule):
    expr = rule["expr"]
    assert "without" not in expr, "`without` keeps whatever labels a scrape adds (pod, node)"
    kept = set()
    for clause in re.findall(r"\b(?:by|on)\s*\(([^)]*)\)", expr):
        kept |= {label.strip() for label in clause.split(",") if label.strip()}
    assert kept, f"no `by`: {expr}"
    assert kept <= BOUNDED, kept - BOUNDED
    assert "job" in kept
    assert ("instance" in kept) == rule["record"].startswith("instance:")


def test_rules_read_only_served_metrics():
    used = set()
    for rule in fleet_rules():
        used |= set(METRIC.findall(rule["expr"]))
    assert used <= served_names(), sorted(used - served_names())


def test_every_rule_is_unit_tested():
    doc = yaml.safe_load(RULES_TEST.read_text())
    assert doc["rule_files"] == [RULES.name]
    tested = {t["expr"].strip() for case in doc["tests"] for t in case["promql_expr_test"]}
    untested = {r["record"] for r in fleet_rules()} - tested
    assert not untested, f"no promql_expr_test for {sorted(untested)}"
    instances = {re.search(r'instance="([^"]+)"', s["series"]).group(1)
                 for case in doc["tests"] for s in case["input_series"]}
    assert len(instances) >= 3


@pytest.mark.parametrize("path", [STATIC, KUBERNETES], ids=lambda p: p.name)
def test_scrape_config_shape(path):
    cfg = yaml.safe_load(path.read_text())
    assert cfg["global"]["scrape_interval"] == "15s"
    assert cfg["rule_files"] == [RULES.name]
    (job,) = cfg["scrape_configs"]
    assert job["job_name"] == "tcptrace"
    assert job.get("metrics_path", "/metrics") == "/metrics"
    if path == STATIC:
        targets = [t for sc in job["static_configs"] for t in sc["targets"]]
        assert len(targets) >= 2 and all(t.endswith(":9725") for t in targets), targets
    else:
        # promtool here cannot check this block (see test_check_config_kubernetes): pinned
        assert job["kubernetes_sd_configs"] == [{
            "role": "pod", "namespaces": {"names": ["tcptrace"]},
            "selectors": [{"role": "pod", "label": "app.kubernetes.io/name=tcptrace-bpf"}]}]


# --- promtool -------------------------------------------------------------------------

def test_check_config_static():
    assert f"SUCCESS: {len(fleet_rules())} rules found" in ok(promtool("check", "config",
                                                                       STATIC.name))


def test_check_config_static_tls_variant(tmp_path):
    (tmp_path / "prometheus.yml").write_text(static_tls_variant())
    shutil.copy(RULES, tmp_path)
    cfg = yaml.safe_load((tmp_path / "prometheus.yml").read_text())
    (job,) = cfg["scrape_configs"]
    assert job["scheme"] == "https" and job["basic_auth"]["password_file"]
    ok(promtool("check", "config", "prometheus.yml", cwd=tmp_path))


def test_check_config_kubernetes(tmp_path):
    out = promtool("check", "config", KUBERNETES.name)
    if out.returncode == 0:  # an upstream build, with Kubernetes discovery
        assert f"SUCCESS: {len(fleet_rules())} rules found" in out.stdout
        return
    # Debian's build refuses the discovery block itself, and nothing else
    assert NO_KUBERNETES_SD in failed(out)
    cfg = without_kubernetes_sd(yaml.safe_load(KUBERNETES.read_text()),
                                [{"targets": ["node-1.example.net:9725"]}])
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    shutil.copy(RULES, tmp_path)
    assert f"SUCCESS: {len(fleet_rules())} rules found" in ok(
        promtool("check", "config", "prometheus.yml", cwd=tmp_path))


def test_check_rules():
    assert f"SUCCESS: {len(fleet_rules())} rules found" in ok(promtool("check", "rules",
                                                                       RULES.name))


def test_test_rules():
    ok(promtool("test", "rules", RULES_TEST.name))


def test_test_rules_fails_on_a_wrong_expected_value(tmp_path):
    doc = yaml.safe_load(RULES_TEST.read_text())
    sample = doc["tests"][0]["promql_expr_test"][0]["exp_samples"][0]
    sample["value"] += 1
    (tmp_path / RULES_TEST.name).write_text(yaml.safe_dump(doc, sort_keys=False))
    shutil.copy(RULES, tmp_path)
    assert "FAILED" in failed(promtool("test", "rules", RULES_TEST.name, cwd=tmp_path))


def test_test_rules_fails_without_the_nan_guards(tmp_path):
    """The failure ratio and the p99 drop a zero denominator; without that, 0/0 records NaN
    and the unit tests say so."""
    text = RULES.read_text()
    assert text.count(" > 0)\n") == 2
    (tmp_path / RULES.name).write_text(text.replace(" > 0)\n", ")\n"))
    shutil.copy(RULES_TEST, tmp_path)
    assert "NaN" in failed(promtool("test", "rules", RULES_TEST.name, cwd=tmp_path))


def test_check_rules_fails_on_a_broken_expression(tmp_path):
    doc = yaml.safe_load(RULES.read_text())
    doc["groups"][0]["rules"][0]["expr"] = "sum by (job (rate(tcptrace_handshakes_total[5m]))"
    (tmp_path / RULES.name).write_text(yaml.safe_dump(doc))
    failed(promtool("check", "rules", RULES.name, cwd=tmp_path))


def test_check_config_fails_without_the_rules_file(tmp_path):
    shutil.copy(STATIC, tmp_path)
    assert RULES.name in failed(promtool("check", "config", STATIC.name, cwd=tmp_path))


# --- a real Prometheus ----------------------------------------------------------------

POD = "tcptrace-bpf-7xk2p"


def discovered(address: str, pod: str, node: str, app: str = "tcptrace-bpf",
               port_name: str = "metrics", phase: str = "Running") -> dict:
    """A target as the pod role would discover it: the meta labels our relabelling reads."""
    return {"targets": [address], "labels": {
        "__meta_kubernetes_namespace": "tcptrace",
        "__meta_kubernetes_pod_name": pod,
        "__meta_kubernetes_pod_node_name": node,
        "__meta_kubernetes_pod_label_app_kubernetes_io_name": app,
        "__meta_kubernetes_pod_container_port_name": port_name,
        "__meta_kubernetes_pod_phase": phase}}


def api(prom: PrometheusServer, path: str, **params) -> dict:
    """A non-query endpoint of the HTTP API (targets, rules): its `data`."""
    doc = json.loads(http_get(f"{prom.base}/api/v1/{path}?" + urllib.parse.urlencode(params)))
    assert doc["status"] == "success", doc
    return doc["data"]


@pytest.fixture(scope="module")
def prom(tmp_path_factory):
    """Prometheus with scrape-kubernetes.yml (discovery faked) and fleet-rules.yml, scraping
    `replay --listen`; returned once the rules have recorded from two scrapes."""
    require(shutil.which("prometheus") is not None, "needs prometheus (Debian package)")
    tmp = tmp_path_factory.mktemp("fleet")
    port = free_port()
    replay = Background(TOOL + ["replay", str(RECORDINGS / "wire1-normal4.rec"),
                                "--listen", f"127.0.0.1:{port}"], "serving http")
    replay.wait_started(60)
    cfg = without_kubernetes_sd(yaml.safe_load(KUBERNETES.read_text()), [
        discovered(f"127.0.0.1:{port}", POD, "node-1"),
        discovered("127.0.0.1:1", POD, "node-1", port_name="health"),  # same pod, other port
        discovered("127.0.0.1:2", "other-0", "node-2", app="other"),
        discovered("127.0.0.1:3", "tcptrace-bpf-old", "node-3", phase="Succeeded")])
    cfg["global"].update(scrape_interval="1s", evaluation_interval="1s",
                         external_labels={"site": "test"})
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    shutil.copy(RULES, tmp)
    server = None
    try:
        server = PrometheusServer(tmp)
        server.wait_scrapes("tcptrace")
        deadline = time.monotonic() + 15
        while not server.query("job:tcptrace_handshakes:rate5m"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"no rule recorded: {api(server, 'rules')}")
            time.sleep(0.25)
        yield server
    finally:
        if server:
            server.stop()
        assert replay.stop(signal.SIGTERM) == 0


def test_kubernetes_relabelling_keeps_one_target_per_node(prom):
    targets = api(prom, "targets", state="any")
    (active,) = targets["activeTargets"]
    assert active["labels"] == {"job": "tcptrace", "instance": "node-1", "node": "node-1",
                                "namespace": "tcptrace", "pod": POD}, active["labels"]
    assert active["health"] == "up", active
    assert len(targets["droppedTargets"]) == 3


def test_fleet_rules_load_and_evaluate_without_error(prom):
    (group,) = api(prom, "rules", type="record")["groups"]
    assert group["name"] == "tcptrace-fleet"
    assert [r["name"] for r in group["rules"]] == [r["record"] for r in fleet_rules()]
    for r in group["rules"]:
        assert r["health"] == "ok" and not r.get("lastError"), r


@pytest.mark.parametrize("rule", fleet_rules(), ids=lambda r: r["record"])
def test_fleet_rule_expression_evaluates(prom, rule):
    prom.query(rule["expr"])


def test_recorded_series_drop_instance_and_family(prom):
    opens = prom.query("job:tcptrace_handshakes:rate5m")
    # the exporter serves every path x outcome x family; summed over family: paths x outcomes
    assert len(opens) == len(OpenPath) * len(Outcome)
    for s in opens:
        assert set(s["metric"]) == {"__name__", "job", "path", "outcome"}, s["metric"]
        assert float(s["value"][1]) == 0  # a replayed recording: counters flat from the start
    (per_host,) = prom.query("instance:tcptrace_handshake_failures:rate5m")
    assert per_host["metric"]["instance"] == "node-1"
    (build,) = prom.query("job:tcptrace_build_info:count")
    assert float(build["value"][1]) == 1
    # nothing opened in the window: no ratio and no quantile, rather than NaN
    assert prom.query("job:tcptrace_handshake_failures:ratio_rate5m") == []
    assert prom.query("job:tcptrace_handshake_duration_seconds:p99_rate5m") == []


def test_federate_serves_the_recorded_series(prom):
    """What a central Prometheus gets with the match[] of the README's Fleet section:
    the recorded series only, with the site's external label."""
    match = '{__name__=~"job:tcptrace_.*|instance:tcptrace_.*"}'
    text = http_get(f"{prom.base}/federate?" + urllib.parse.urlencode({"match[]": match}))
    samples = [line for line in text.splitlines() if line and not line.startswith("#")]
    names = {line.split("{")[0] for line in samples}
    assert "job:tcptrace_handshakes:rate5m" in names
    assert "instance:tcptrace_handshake_failures:rate5m" in names
    assert all(n.startswith(("job:tcptrace_", "instance:tcptrace_")) for n in names), names
    assert all('site="test"' in line for line in samples), samples[:3]
