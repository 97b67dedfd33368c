"""Every PromQL expression the project ships: dashboard targets and alert rules."""

import json
import re
from pathlib import Path

import yaml

DASHBOARDS = Path(__file__).resolve().parents[1] / "dashboards"
DASHBOARD = DASHBOARDS / "tcptrace-overview.json"
ALERTS = DASHBOARDS / "alerts.yml"
METRIC = re.compile(r"\b(tcptrace_[a-z_]+)\b")


def panels(dash: dict):
    for p in dash["panels"]:
        yield p
        yield from p.get("panels", [])


def dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in panels(dash) for t in p.get("targets", []) if t.get("expr")]


def alert_rules() -> list[dict]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [r for g in doc["groups"] for r in g["rules"]]


def concrete(expr: str) -> str:
    """Grafana variables replaced as Grafana would for one instance, all instances."""
    return (expr.replace("$__rate_interval", "1m").replace("${__rate_interval}", "1m")
            .replace("$__interval", "15s").replace('"$instance"', '".*"')
            .replace("$instance", ".*"))


def metric_names(expr: str) -> set[str]:
    return set(METRIC.findall(expr))
