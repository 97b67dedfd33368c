"""Decoder tests on records recorded from the real kernel (tests/fixtures)."""

import pytest

from tcptrace_bpf import wire
from tests import fixtures


@pytest.mark.parametrize("name", fixtures.names())
def test_every_recorded_record_decodes(name):
    doc = fixtures.load(name)
    assert doc["wire_version"] == wire.WIRE_VERSION
    assert doc["raw"], "fixture holds no records"
    for raw in doc["raw"]:
        assert len(raw) == wire.RECORD_SIZE
        rec = wire.decode(raw)
        assert rec.kind in (wire.KIND_OPEN, wire.KIND_REQ_SYNACK_RTX)
        assert rec.family in {exp["family"] for exp in doc["expect"]}
        assert rec.ts_ns > 0 and rec.netns > 0


def test_v4_mapped_addresses_read_as_the_kernel_prints_them():
    """A dual-stack listener's children: AF_INET6 sockets with v4-mapped addresses, decoded as
    getsockname() gave them (::ffff:127.0.0.1), not ipaddress's ::ffff:7f00:1."""
    doc = fixtures.load("mapped")
    want = {(e["saddr"], e["sport"], e["daddr"], e["dport"]) for e in doc["expect"]}
    got = {(r.saddr, r.sport, r.daddr, r.dport) for r in map(wire.decode, doc["raw"])}
    assert got == want
    assert sum(1 for t in got if t[0] == t[2] == "::ffff:127.0.0.1") == 3


def test_tuple_and_process_decode_as_the_scenario_saw_them():
    doc = fixtures.load("normal6")
    active = wire.decode(doc["raw"][0])
    exp = doc["expect"][0]
    assert (active.saddr, active.sport, active.daddr, active.dport) == \
        (exp["saddr"], exp["sport"], exp["daddr"], exp["dport"])
    assert active.pid == exp["pid"] and active.comm == exp["comm"]


def test_short_record_is_a_decode_error():
    raw = fixtures.load("refused")["raw"][0]
    with pytest.raises(wire.DecodeError, match="expected 120"):
        wire.decode(raw[:50])


@pytest.mark.parametrize("field,msg", [("kind", "unknown record kind"),
                                       ("family", "unknown address family"),
                                       ("nstates", "states, at most")])
def test_corrupt_fields_are_decode_errors(field, msg):
    raw = bytearray(fixtures.load("refused")["raw"][0])
    raw[wire.field_offsets()[field]] = 99
    with pytest.raises(wire.DecodeError, match=msg):
        wire.decode(bytes(raw))


def test_field_offsets_follow_the_c_layout():
    off = wire.field_offsets()
    assert off["ts_ns"] == 0 and off["cgroup_id"] == 24 and off["saddr"] == 32
    assert off["netns"] == 64 and off["kind"] == 82 and off["states"] == 89
    assert off["comm"] == 104 and wire.RECORD_SIZE == 120
