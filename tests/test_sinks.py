"""The hand-written JSON renderer says exactly what json.dumps of to_dict() says."""

import json

import pytest

from tcptrace_bpf.sinks import jsonl
from tcptrace_bpf.tracker import Classifier
from tests import fixtures


@pytest.mark.parametrize("name", fixtures.names())
def test_json_line_equals_to_dict(name):
    t = Classifier(1.7e9)
    doc = fixtures.load(name)
    out = [o for raw in doc["raw"] for o in t.feed_bytes(raw)]
    out += t.expire(10**20)
    assert out
    for rec in out:
        line = jsonl.render(rec)
        assert json.loads(line) == rec.to_dict()
        assert list(json.loads(line)) == list(rec.to_dict())  # same key order


def test_awkward_comm_is_escaped():
    t = Classifier(0.0)
    rec = t.feed_bytes(fixtures.load("refused")["raw"][0])[0]
    rec.comm = 'a"b\\c\x01'
    assert json.loads(jsonl.render(rec))["comm"] == 'a"b\\c\x01'
