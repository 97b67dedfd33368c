"""`--json`: one JSON object per line (keys documented in README "JSON output").

Opens are formatted by hand (one per connection, the hot path of `trace --json`); every
string that could need escaping goes through json.dumps. tests/test_sinks.py checks the
result against json.dumps of to_dict() for every recorded scenario."""

from __future__ import annotations

import json

from ..model import OpenRecord

_dumps = json.dumps


def _opt(v) -> str:
    return "null" if v is None else str(v)


def render(item) -> str:
    if type(item) is not OpenRecord:
        return _dumps(item.to_dict(), separators=(",", ":"))
    r = item
    d = "null" if r.duration_s is None else repr(round(r.duration_s, 9))
    states = ",".join(f'"{s}"' for s in r.states)  # enum names: nothing to escape
    comm = "null" if r.comm is None else _dumps(r.comm)
    return (f'{{"ts":{round(r.ts, 6)!r},"path":"{r.path.value}","outcome":"{r.outcome.value}",'
            f'"family":{r.family},"saddr":"{r.saddr}","sport":{r.sport},"daddr":"{r.daddr}",'
            f'"dport":{r.dport},"states":[{states}],"duration_s":{d},'
            f'"syn_retransmits":{r.syn_retransmits},"synack_retransmits":{r.synack_retransmits},'
            f'"pid":{_opt(r.pid)},"comm":{comm},"netns":{r.netns},"errno":{r.errno},'
            f'"cgroup":{_opt(r.cgroup)}}}')
