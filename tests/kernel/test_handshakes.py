"""Every open path and outcome, driven through the real kernel and reported by the live
tracer (tracepoint backend, the one this kernel allows)."""

import pytest

from .harness import compare, run_scenario


def _check(tracer, name):
    sc = run_scenario(name)
    want = sc["expect"]
    got = tracer.wait_for(sc["netns"], len(want), timeout=20, pid=sc["pid"])
    problems = compare(want, got)
    assert not problems, f"{name}: " + "\n".join(problems)
    return sc, got


@pytest.mark.parametrize("name", ["normal4", "normal6", "mapped", "self4", "self6", "crossed4",
                                  "crossed6", "refused", "unreachable", "abort_syn_sent",
                                  "port_exhausted4", "port_exhausted6"])
def test_handshake(tracer, name):
    _check(tracer, name)


def test_syn_timeout(tracer):
    sc, got = _check(tracer, "syn_timeout")
    assert sc["expect"][0]["syn_retransmits"] >= 1
    assert got[0]["duration_s"] == pytest.approx(sc["took_s"], abs=0.1)


def test_synack_loss_passive_side(tracer):
    sc, got = _check(tracer, "synack_loss")
    server = [r for r in got if r["path"] == "passive"][0]
    assert server["synack_retransmits"] >= 1
    assert server["states"] == ["LISTEN", "NEW_SYN_RECV", "CLOSE"]


def test_burst_counts_are_exact(tracer):
    sc = run_scenario("burst")
    n = sc["count"]
    assert sc["accepted"] == n and sc["clients_ok"] == n
    got = tracer.wait_for(sc["netns"], 2 * n, timeout=30, pid=sc["pid"])
    paths = sorted((r["path"], r["outcome"]) for r in got)
    assert paths.count(("active", "established")) == n
    assert paths.count(("passive", "established")) == n
    assert len(got) == 2 * n
