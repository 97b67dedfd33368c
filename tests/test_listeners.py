"""The listener side's collector, fed the listener tables recorded from the real kernel
(tests/fixtures/listeners, made by `capture --listeners`): interval reports add up to the
namespace's MIB deltas, ports stay bounded, the table sorts worst first."""

import json
from pathlib import Path

import pytest

from tcptrace_bpf.listeners import (ListenerReport, ListenerWatch, OTHER_PORT, PortFolder,
                                    listener_from_dict, table)
from tcptrace_bpf.sinks import text
from tcptrace_bpf.tracker import Match

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "listeners"
REASONS = ("accept_queue_full", "syn_queue_full", "other")


def load(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def listeners_of(snapshot: dict) -> list:
    return [listener_from_dict(d) for d in snapshot["listeners"]]


def feed(doc: dict, match=None) -> list[ListenerReport]:
    watch, reports = ListenerWatch(match, doc["snapshots"][0]["t"]), []
    for snap in doc["snapshots"]:
        got, _gone = watch.update(snap["t"], listeners_of(snap))
        reports += got
    return reports


def oracle(mib: dict) -> dict:
    g = lambda k: mib.get(k, 0)  # noqa: E731
    return {"accept_queue_full": g("ListenOverflows"), "syn_queue_full": g("TCPReqQFullDrop"),
            "other": g("ListenDrops") - g("ListenOverflows") - g("TCPReqQFullDrop"),
            "syncookies_sent": g("SyncookiesSent")}


def sums(reports) -> dict:
    out = dict.fromkeys([*REASONS, "syncookies_sent"], 0)
    for r in reports:
        d = r.to_dict()
        for k in REASONS:
            out[k] += d["drops"][k]
        out["syncookies_sent"] += d["syncookies_sent"]
    return out


NAMES = sorted(p.stem for p in FIXTURES.glob("*.json"))


def test_fixtures_exist():
    assert {"acceptq_syn", "synq_full", "cookies_always", "multi_listener"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_interval_reports_add_up_to_the_mib(name):
    doc = load(name)
    reports = feed(doc)
    assert sums(reports) == oracle(doc["mib"])
    for r in reports:
        d = r.to_dict()
        assert d["type"] == "listener" and r.delta.moved and d["interval_s"] >= 0
        assert set(d) == {"type", "ts", "netns", "family", "addr", "port", "pid", "comm",
                          "drops", "syncookies_sent", "synack_retransmits", "accept_queue",
                          "accept_queue_max", "syn_queue", "interval_s"}


def test_a_closed_listener_is_reported_once_more_then_forgotten():
    doc = load("acceptq_syn")
    watch, forgotten = ListenerWatch(None, doc["snapshots"][0]["t"]), []
    for snap in doc["snapshots"]:
        _, gone = watch.update(snap["t"], listeners_of(snap))
        forgotten += gone
    closed = {d["key"] for s in doc["snapshots"] for d in s["listeners"] if d["closed"]}
    assert closed and set(forgotten) == closed


def test_filters_apply_to_listener_lines():
    doc = load("multi_listener")
    ports = {lst["label"]: lst["port"] for lst in doc["ss"]}
    only_a = feed(doc, Match(port=ports["A"]))
    assert only_a and {r.listener.port for r in only_a} == {ports["A"]}
    assert feed(doc, Match(pid=1)) == []
    assert feed(doc, Match(netns=doc["netns"] + 1)) == []


def test_per_listener_figures_are_its_own_sk_drops():
    """multi_listener: all its drops are at SYN time, one sk_drops each (ss's figure)."""
    doc = load("multi_listener")
    by_port: dict[int, int] = {}
    for r in feed(doc):
        by_port[r.listener.port] = by_port.get(r.listener.port, 0) + sum(r.delta.drops)
    for lst in doc["ss"]:
        assert by_port.get(lst["port"], 0) == lst["ss"]["sk_drops"]


def test_text_line_names_the_trouble():
    reports = feed(load("acceptq_syn"))
    line = text.render(reports[0])
    assert " listener " in line and "accept queue full:" in line and "dropped" in line


def test_port_folder_bounds_the_label_and_counts_what_it_folds():
    f = PortFolder(limit=2)
    assert [f.label(p) for p in (80, 443, 8080, 80, 9090, 0)] == ["80", "443", OTHER_PORT, "80",
                                                                    OTHER_PORT, OTHER_PORT]
    assert f.folded == 2  # 8080 and 9090; port 0 is the kernel's own overflow slot


def test_table_is_worst_first_from_a_real_snapshot():
    doc = load("multi_listener")
    last = [snap for snap in doc["snapshots"]  # the last one before they closed
            if snap["listeners"] and not any(x["closed"] for x in snap["listeners"])][-1]
    rows = table(listeners_of(last), {}, 1.0)
    assert len(rows) == 3
    drops = [sum(r.listener.counts.drops) for r in rows]
    assert drops == sorted(drops, reverse=True) and drops[0] > 0
