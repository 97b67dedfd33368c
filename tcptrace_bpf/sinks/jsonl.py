"""`--json`: one JSON object per line (keys documented in README "JSON output").

Opens are formatted by hand (one per connection, the hot path of `trace --json`), with the
fragments that repeat (path/outcome/family, the state list) built once; every string that
could need escaping goes through json.dumps. tests/test_sinks.py checks the result against
json.dumps of to_dict() for every recorded scenario."""

from __future__ import annotations

import json

from ..model import OpenAttempt
from . import Lines

_dumps = json.dumps
_KIND: dict[tuple, str] = {}    # (path, outcome, family) -> '"path":...,"family":4,'
_STATES: dict[tuple, str] = {}  # state names -> '["CLOSE","SYN_SENT",...]'
_FLAGS: dict[tuple, str] = {}   # flag names -> '["fastopen"]' (a handful of combinations)


def _opt(v) -> str:
    return "null" if v is None else str(v)


def render(item) -> str:
    if type(item) is not OpenAttempt:
        return _dumps(item.to_dict(), separators=(",", ":"))
    r = item
    kind = _KIND.get((r.path, r.outcome, r.family))
    if kind is None:
        kind = _KIND[(r.path, r.outcome, r.family)] = (
            f'"path":"{r.path.value}","outcome":"{r.outcome.value}","family":{r.family},')
    states = _STATES.get(r.states)
    if states is None:
        states = _dumps(list(r.states), separators=(",", ":"))
        if len(_STATES) < 4096:
            _STATES[r.states] = states
    d = "null" if r.duration_s is None else f"{r.duration_s:.9f}"
    comm = "null" if r.comm is None else _dumps(r.comm)
    flags = _FLAGS.get(r.flags)
    if flags is None:
        flags = _FLAGS[r.flags] = _dumps(list(r.flags), separators=(",", ":"))
    return (f'{{"type":"open","ts":{r.ts:.6f},{kind}"saddr":"{r.saddr}","sport":{r.sport},'
            f'"daddr":"{r.daddr}","dport":{r.dport},"states":{states},"duration_s":{d},'
            f'"syn_retransmits":{r.syn_retransmits},"synack_retransmits":{r.synack_retransmits},'
            f'"pid":{_opt(r.pid)},"comm":{comm},"netns":{r.netns},"errno":{r.errno},'
            f'"cgroup":{_opt(r.cgroup)},"flags":{flags}}}')


class JsonLines(Lines):
    """Lines of render(); also takes lines rendered elsewhere, already encoded (the compiled
    consumer, tcptrace_bpf/fastpath.py, which sessions use when a sink has write_bytes)."""

    def write_bytes(self, data: bytes) -> None:
        self.out.flush()  # what emit() wrote comes first
        buffer = getattr(self.out, "buffer", None)
        if buffer is None:  # a text-only stream (tests): the lines are ASCII
            self.out.write(data.decode("ascii"))
        else:
            buffer.write(data)


def sink(out=None) -> JsonLines:
    """`--json`: one object per line."""
    return JsonLines(render, out)
