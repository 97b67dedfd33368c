"""Classifier tests: event streams recorded from the real kernel (tests/fixtures) must be
classified as the scenario's own sockets said (errno, getsockname, nft counters)."""

import dataclasses

import pytest

from tcptrace_bpf import wire
from tcptrace_bpf.model import OpenPath, Outcome
from tcptrace_bpf.tracker import Match, Classifier
from tests import fixtures

OPEN_SCENARIOS = [n for n in fixtures.names() if n != "synack_loss"]


def replay(name: str, match: Match = Match()):
    doc = fixtures.load(name)
    tracker = Classifier(epoch_offset=0.0, match=match)
    out = []
    for raw in doc["raw"]:
        out += tracker.feed_bytes(raw)
    last_ts = max(wire.decode(r).ts_ns for r in doc["raw"])
    out += tracker.expire(last_ts + 600 * 10**9)
    return doc, tracker, out


def by_tuple(out, exp):
    got = [r for r in out if (r.saddr, r.sport, r.daddr, r.dport) ==
           (exp["saddr"], exp["sport"], exp["daddr"], exp["dport"])]
    assert len(got) == 1, f"want one record for {exp}, got {got}"
    return got[0].to_dict()


@pytest.mark.parametrize("name", fixtures.names())
def test_recorded_scenario_is_classified_as_the_sockets_saw_it(name):
    doc, tracker, out = replay(name)
    assert len(out) == len(doc["expect"])
    for exp in doc["expect"]:
        rec = by_tuple(out, exp)
        for key, value in exp.items():
            assert rec[key] == value, f"{name}: {key}={rec[key]!r}, want {value!r}"
    assert sum(tracker.counts.values()) == len(doc["expect"])
    assert not tracker.lost


def test_durations_come_from_kernel_timestamps():
    _, _, out = replay("syn_timeout")
    assert 2.5 < out[0].duration_s < 4.0  # two SYN re-sends with tcp_syn_retries=1
    _, _, out = replay("normal4")
    passive = [r for r in out if r.path is OpenPath.PASSIVE][0]
    assert 0 < passive.duration_s < 0.01  # the kernel's SYN-ACK -> ACK sample on loopback


def test_expired_request_is_reported_only_after_its_synack_budget():
    doc = fixtures.load("synack_loss")
    tracker = Classifier(0.0)
    for raw in doc["raw"]:
        tracker.feed_bytes(raw)
    reqs = [wire.decode(r) for r in doc["raw"] if wire.decode(r).kind == wire.KIND_REQ_SYNACK_RTX]
    assert tracker.pending_requests == 1
    assert tracker.expire(reqs[-1].ts_ns) == []  # still within the kernel's retry budget
    (rec,) = tracker.expire(reqs[-1].ts_ns + 600 * 10**9)
    assert (rec.path, rec.outcome) == (OpenPath.PASSIVE, Outcome.TIMEOUT)
    assert rec.synack_retransmits == reqs[-1].synack_retrans
    assert tracker.pending_requests == 0


def test_filters_count_only_what_they_keep():
    doc = fixtures.load("normal4")
    port = doc["expect"][0]["dport"]  # the listener's port: both records carry it
    _, tracker, out = replay("normal4", Match(port=port))
    assert len(out) == 2
    _, tracker, out = replay("normal4", Match(family=6))
    assert out == [] and not tracker.counts
    _, tracker, out = replay("normal4", Match(port=doc["expect"][0]["sport"]))
    assert len(out) == 2  # the client port is on both sides of the connection too


def test_decode_errors_are_counted_not_fatal():
    raw = fixtures.load("refused")["raw"][0]
    tracker = Classifier(0.0)
    assert tracker.feed_bytes(raw[:20]) == []
    assert tracker.lost["decode_error"] == 1
    assert len(tracker.feed_bytes(raw)) == 1


def test_unknown_state_sequence_is_counted():
    # a recorded record whose states were altered to a sequence no open path produces
    rec = wire.decode(fixtures.load("refused")["raw"][0])
    tracker = Classifier(0.0)
    assert tracker.feed(dataclasses.replace(rec, states=(1, 7))) == []
    assert tracker.lost["unknown_transition"] == 1


def test_ts_is_epoch_seconds():
    doc = fixtures.load("refused")
    rec = wire.decode(doc["raw"][0])
    (out,) = Classifier(epoch_offset=1_700_000_000.0).feed(rec)
    assert out.ts == pytest.approx(1_700_000_000.0 + rec.ts_ns / 1e9)


def test_process_and_namespace_filters_on_recorded_opens():
    doc = fixtures.load("normal4")
    exp = doc["expect"][0]

    def shown(**match):
        t = Classifier(0.0, Match(**match))
        return [o for raw in doc["raw"] for o in t.feed_bytes(raw)]

    assert len(shown(pid=exp["pid"])) == 2  # connect() caller and listener owner: one process
    assert shown(pid=exp["pid"] + 1) == []
    assert len(shown(cgroup=exp["cgroup"])) == 2 and shown(cgroup=exp["cgroup"] + 1) == []
    netns = shown()[0].netns
    assert len(shown(netns=netns)) == 2 and shown(netns=netns + 1) == []


def test_failed_and_slow_keep_what_the_recorded_sockets_say():
    """--failed: the sockets whose own errno said the open failed; --slow S: a re-sent SYN or
    SYN-ACK (the scenario's nft counters), or a duration of at least S; both: either."""
    for name in fixtures.names():
        doc = fixtures.load(name)
        failed = {(e["saddr"], e["sport"]) for e in doc["expect"] if e["outcome"] != "established"}
        resent = {(e["saddr"], e["sport"]) for e in doc["expect"]
                  if e.get("syn_retransmits") or e.get("synack_retransmits")}
        _, _, every = replay(name)
        assert {(r.saddr, r.sport) for r in replay(name, Match(failed=True))[2]} == failed, name
        # no recorded handshake took an hour: only re-sends count
        slow = {(r.saddr, r.sport) for r in replay(name, Match(slow=3600.0))[2]}
        assert resent <= slow == {(r.saddr, r.sport) for r in every
                                  if r.syn_retransmits or r.synack_retransmits}, name
        both = {(r.saddr, r.sport) for r in replay(name, Match(failed=True, slow=3600.0))[2]}
        assert both == failed | slow, name
        # --slow 0: every open with a duration, or a re-send
        zero = {(r.saddr, r.sport) for r in replay(name, Match(slow=0.0))[2]}
        assert zero == {(r.saddr, r.sport) for r in every
                        if r.duration_s is not None or r.syn_retransmits or r.synack_retransmits}
    # the recordings hold both kinds
    assert replay("refused", Match(failed=True))[2] and not replay("normal4", Match(failed=True))[2]
    assert replay("syn_timeout", Match(slow=3600.0))[2]
