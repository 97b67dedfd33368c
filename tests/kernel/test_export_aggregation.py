"""Export mode names and counts opens in the kernel: it must count exactly what the Python
tracker names from one-record-per-open, on the same real handshakes."""

import time

from tcptrace_bpf import loader
from tcptrace_bpf.buckets import buckets_from_sysctls
from tcptrace_bpf.sinks.prometheus import HandshakeMetrics
from tcptrace_bpf.tracker import Classifier

from .conftest import kernel_ready
from .harness import run_scenario

SCENARIOS = ["normal4", "normal6", "self4", "self6", "crossed4", "refused", "unreachable",
             "abort_syn_sent", "syn_timeout", "port_exhausted4", "port_exhausted6", "fastopen",
             "cookies_always"]


def test_kernel_counts_equal_tracker_counts():
    kernel_ready()
    buckets = buckets_from_sysctls()
    with loader.BpfPrograms.start("tracepoint") as records, \
            loader.BpfPrograms.start("tracepoint", loader.Settings(aggregate_buckets=tuple(buckets))) as agg:
        tracker, python = Classifier(0.0), HandshakeMetrics(buckets)
        counting = []  # host-wide opens that resolved while `agg` compiled are not compared
        records.open_ring(lambda raw: counting and [python.observe(o)
                                                    for o in tracker.feed_bytes(raw)])
        records.drain()
        before = agg.aggregates()
        counting.append(True)
        expected = sum(len(run_scenario(name)["expect"]) for name in SCENARIOS)
        end = time.monotonic() + 3
        while time.monotonic() < end:
            records.poll(100)
        after = agg.aggregates()
        assert agg.kernel_lost()["unknown_transition"] == 0
    kernel = {k: [a - b for a, b in zip(after[k], before[k])] for k in after}
    assert sum(python.handshakes) >= expected  # host-wide: the scenarios' opens, at least
    assert kernel["handshakes"] == python.handshakes
    assert kernel["rtx"] == python.rtx
    assert kernel["flagged"] == python.flagged and sum(python.flagged) >= 4 + 3
    # Each tracer takes its own timestamps, a few hundred ns apart, so one open may fall in
    # neighbouring buckets of the two; per series, the number observed and the sum agree.
    nb = len(buckets)
    for base in range(0, len(python.duration), nb + 2):
        k, p = kernel["duration"][base:base + nb + 2], python.duration[base:base + nb + 2]
        assert sum(k[:nb + 1]) == sum(p[:nb + 1])
        assert abs(k[nb + 1] - p[nb + 1]) <= 0.1 * p[nb + 1] + 100_000
