"""`tcptrace-bpf listeners`: the table of listeners (listeners.Row) as rich renders it, or
one JSON document."""

from __future__ import annotations

import json

from ..listeners import Row

COLUMNS = ("netns", "listener", "owner", "accept q", "syn q", "accept full", "syn full",
           "other", "cookies", "synack rtx", "opens/s")


def _n(v) -> str:
    return "-" if v is None else str(v)


def rich_table(rows: list[Row], title: str):
    from rich.table import Table
    t = Table(title=title, title_justify="left")
    for i, name in enumerate(COLUMNS):
        t.add_column(name, justify="left" if i < 3 else "right", no_wrap=True)
    for r in rows:
        lst, c = r.listener, r.listener.counts
        where = f"[{lst.addr}]:{lst.port}" if lst.family == 6 else f"{lst.addr}:{lst.port}"
        owner = f"{lst.comm}[{lst.pid}]" if lst.pid else "-"
        queue = f"{_n(lst.accept_queue)}/{_n(lst.accept_queue_max)}"
        rate = "-" if r.opens_per_s is None else f"{r.opens_per_s:.1f}"
        style = "bold red" if any(c.drops) else ("yellow" if c.syncookies_sent else None)
        t.add_row(str(lst.netns), where, owner, queue, _n(lst.syn_queue),
                  *(str(n) for n in c.drops), str(c.syncookies_sent),
                  str(c.synack_retransmits), rate, style=style)
    return t


def json_document(rows: list[Row], ts: float, interval_s: float) -> str:
    return json.dumps({"ts": round(ts, 6), "interval_s": interval_s,
                       "listeners": [r.to_dict() for r in rows]}, separators=(",", ":"))
