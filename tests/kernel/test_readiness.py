"""Exporter readiness on the real kernel: `export` binds its port first and answers /metrics
503 (one line, no tcptrace_ series) and /-/ready 503 while it compiles and attaches; from
then on 200 with the full exposition, and a handshake made once /-/ready says 200 is counted.
Polled from the first moment the port answers."""

import time
import urllib.error
import urllib.request
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from tcptrace_bpf.endpoint import NOT_TRACING_YET
from tcptrace_bpf.model import OpenPath, Outcome

from tests.test_http import get as http_get

from .conftest import START_TIMEOUT, kernel_ready
from .harness import run_scenario
from .test_operability import our_bpf_objects
from .test_prometheus import Exporter

REFUSED_V4 = 'tcptrace_handshakes_total{family="4",outcome="refused",path="active"}'


def get(url: str) -> tuple[int, str]:
    """(status, body) whatever the status; URLError if nothing answers."""
    return http_get(url)[:2]


@dataclass
class Poll:
    announced: bool  # the tool had printed its "serving" line before this poll began
    ready: tuple[int, str]
    metrics: tuple[int, str]
    healthy: tuple[int, str]


def sample(metrics_body: str, series: str) -> float:
    line = next(x for x in metrics_body.splitlines() if x.startswith(series + " "))
    return float(line.split()[-1])


def poll_until_ready(exp: Exporter) -> list[Poll]:
    """Every answer of /-/ready, /metrics and /-/healthy from the first one the port gives
    until /-/ready says 200 (then once more)."""
    base = f"http://127.0.0.1:{exp.port}"
    polls: list[Poll] = []
    end = time.monotonic() + START_TIMEOUT  # a bound on waiting, not an assertion
    while time.monotonic() < end:
        assert exp.proc.poll() is None, "exporter exited:\n" + "".join(exp.err)
        announced = exp.started.is_set()
        try:
            ready = get(base + "/-/ready")
        except urllib.error.URLError:
            assert not polls, "the port stopped answering"
            time.sleep(0.01)  # not bound yet
            continue
        polls.append(Poll(announced, ready, get(base + "/metrics"), get(base + "/-/healthy")))
        if ready[0] == 200:
            if len(polls) > 1 and polls[-2].ready[0] == 200:
                return polls
        time.sleep(0.05)
    raise AssertionError(f"/-/ready never said 200: {polls[-1:]}\n" + "".join(exp.err))


def test_export_is_503_until_tracing_then_serves_and_counts():
    kernel_ready()
    exp = Exporter(wait=False)
    try:
        polls = poll_until_ready(exp)
        not_yet = f"tcptrace-bpf: {NOT_TRACING_YET}\n"

        # before tracing: seen, and only the one-line reason
        first = polls[0]
        assert not first.announced
        assert first.ready == (503, not_yet) and first.metrics == (503, not_yet), first
        for p in polls:
            assert p.healthy == (200, "tcptrace-bpf is healthy.\n"), p
            for status, body in (p.ready, p.metrics):
                assert status in (200, 503), p
                if status == 503:
                    assert body == not_yet and "tcptrace_" not in body, p
                    # ready() comes before the "serving" line: no 503 after it
                    assert not p.announced, p

        # one transition each, never back
        for key in ("ready", "metrics"):
            seq = [getattr(p, key)[0] for p in polls]
            k = seq.index(200)
            assert set(seq[:k]) == {503} and set(seq[k:]) == {200}, (key, seq)

        # ready means attached: the process holds its programs
        progs, _ = our_bpf_objects(exp.proc.pid)
        assert len(progs) >= 4, progs

        # after: the full exposition, well-formed
        status, body = get(f"http://127.0.0.1:{exp.port}/metrics")
        assert status == 200
        families = {f.name: f for f in text_string_to_metric_families(body)}
        # every path x outcome x family, pre-set
        assert len(families["tcptrace_handshakes"].samples) == len(OpenPath) * len(Outcome) * 2
        build = families["tcptrace_build_info"].samples[0]
        assert build.labels["backend"] == "tracepoint" and build.value == 1
        for name in ("tcptrace_handshake_duration_seconds", "tcptrace_syn_retransmits",
                     "tcptrace_synack_retransmits", "tcptrace_events_lost",
                     "tcptrace_tracked_sockets"):
            assert name in families, name

        # a script that waits for /-/ready and then connects: its handshake is counted.
        # (The counter is host-wide, so other activity can only add to it: >=.)
        before = sample(body, REFUSED_V4)
        sc = run_scenario("refused")
        want = before + sum(1 for e in sc["expect"] if e["outcome"] == "refused")
        after = before
        end = time.monotonic() + 10  # counted in the kernel at the tracepoint: at once
        while after < want and time.monotonic() < end:
            after = sample(get(f"http://127.0.0.1:{exp.port}/metrics")[1], REFUSED_V4)
            time.sleep(0.05)
        assert after >= want, (before, after, sc)
    finally:
        rc = exp.stop()
    assert rc == 0, "".join(exp.err)
