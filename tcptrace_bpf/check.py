"""`tcptrace-bpf check`: can tracing work on this host? Every answer comes from trying
(trial loads, a compile against the headers), never from feature flags, and every problem
comes with its remedy."""

from __future__ import annotations

import ctypes
import os
import platform
import socket
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import loader, privileges
from .btf import BTF, BTFError, VMLINUX_BTF

TRACEPOINT = Path(privileges.TRACEPOINT_FORMAT[0]).parent  # bcc's debugfs path
SETUP = "run `make setup` (or scripts/setup.sh) as root"
# The programs' own includes: the offsets bcc would compile in without BTF.
_INCLUDES = ("net/sock.h", "net/inet_sock.h", "net/request_sock.h", "linux/tcp.h", "net/tcp.h")


@dataclass
class Item:
    name: str
    status: str          # ok | warn | fail
    detail: str
    remedy: str = ""


@dataclass
class Report:
    checks: list[Item] = field(default_factory=list)
    offsets: dict = field(default_factory=lambda: {"compared": 0, "mismatched": []})
    backends: list[str] = field(default_factory=list)  # those that loaded, best first

    @property
    def ok(self) -> bool:
        return bool(self.backends) and not any(c.status == "fail" for c in self.checks)

    def add(self, *args, **kw) -> Item:
        self.checks.append(Item(*args, **kw))
        return self.checks[-1]

    def to_dict(self) -> dict:
        return {"ok": self.ok, "checks": [asdict(c) for c in self.checks],
                "offsets": self.offsets, "backends": self.backends}


def run() -> Report:
    r = Report()
    r.add("kernel", "ok", platform.release())
    need = privileges.required()
    lacking = privileges.missing()
    if lacking:
        r.add("privileges", "fail", lacking, "run as root, or with " + " + ".join(need))
    else:
        r.add("privileges", "ok", " + ".join(need) + " effective")
    btf = _btf(r)
    if privileges.tracefs_denied():
        r.add("tracefs", "fail", f"{TRACEPOINT.parent}: permission denied (root's, mode 0700)",
              "run as root, or grant CAP_DAC_READ_SEARCH too")
    elif not os.path.exists(TRACEPOINT):
        r.add("tracefs", "fail", f"{TRACEPOINT} not found (debugfs/tracefs not mounted)",
              "mount -t debugfs debugfs /sys/kernel/debug (scripts/mount-tracefs.sh)")
    else:
        r.add("tracefs", "ok", "tracepoint sock:inet_sock_set_state present")
    try:
        bcc = loader.import_bcc()
        headers = loader.kernel_headers()
    except loader.LoaderError as exc:
        r.add("bcc and kernel headers", "fail", str(exc), SETUP)
        return r
    r.add("kernel headers", "ok", headers)
    if lacking:
        r.add("trial loads", "fail", "skipped: loading programs needs the privileges above",
              "run as root")
        return r
    _ring_buffer(r, bcc)
    _backends(r)
    _header_offsets(r, bcc, btf)
    return r


def _btf(r: Report):
    if not VMLINUX_BTF.exists():
        r.add("BTF", "warn", f"{VMLINUX_BTF} absent: struct offsets come from the kernel "
              "headers, which may not match this kernel", "a kernel built with CONFIG_DEBUG_INFO_BTF=y")
        return None
    try:
        btf = BTF.from_file()
        for struct, member in loader.OFFSETS.values():
            btf.offsetof(struct, member)
    except BTFError as exc:
        r.add("BTF", "fail", f"cannot read struct offsets: {exc}", "report this kernel's BTF as a bug")
        return None
    r.add("BTF", "ok", f"{VMLINUX_BTF}: all {len(loader.OFFSETS)} fields read by the programs found")
    return btf


def _ring_buffer(r: Report, bcc) -> None:
    try:
        with loader.kernel_messages() as said:
            b = bcc.BPF(text=b"BPF_RINGBUF_OUTPUT(rb, 1);", cflags=["-w"])
        b.cleanup()
        r.add("ring buffer", "ok", "BPF_MAP_TYPE_RINGBUF created")
    except Exception as exc:  # bcc raises bare Exception
        r.add("ring buffer", "fail", said() or loader.first_line(exc), "a kernel of 5.8 or later")


def _backends(r: Report) -> None:
    for backend in loader.AUTO_ORDER:
        try:
            with loader.BpfPrograms.start(backend.value) as progs:
                listener_side = progs.caps.listener_side
                attached = progs.listener_side
            r.backends.append(backend.value)
            r.add(f"backend {backend.value}", "ok", "loads and attaches")
            if len(r.backends) == 1:  # the listener side of the backend auto would choose
                r.add("listener side", "ok" if attached else "warn",
                      f"{listener_side}: drops by reason, cookies and Fast Open exact while one "
                      "CPU at a time works on a listener, else counted as listen_drop_inferred; "
                      "queues and SYN-ACK re-sends exact (README: Listener side)" if attached
                      else listener_side,
                      "" if attached else "mount cgroup v2 (the listener side attaches at its root)")
        except loader.LoaderError as exc:
            # forced to one backend: the one trial says why; anything else is its own message
            why = exc.trials[-1].reason if isinstance(exc, loader.NoBackendError) else str(exc)
            r.add(f"backend {backend.value}", "warn", f"refused: {why}",
                  "none needed if another backend loads" if backend is not loader.Backend.TRACEPOINT
                  else "a kernel with the sock:inet_sock_set_state tracepoint (4.16+)")
    if not r.backends:
        r.add("backends", "fail", "no backend loads", "see the refusals above")
    else:
        r.add("backends", "ok", f"auto would choose {r.backends[0]}")


def header_offsets(bcc, fields: dict[str, tuple[str, str]]) -> dict[str, int]:
    """Each field's offset as the installed headers lay it out: a program compiled against
    them stores its offsetof() constants in a map when a listen() of ours fires the
    tracepoint every backend already needs."""
    body = [f"#include <{h}>" for h in _INCLUDES]
    body += [f"BPF_ARRAY(tt_offsets, u64, {len(fields)});",
             "TRACEPOINT_PROBE(sock, inet_sock_set_state) {", "  int i; u64 v;"]
    for i, (struct, member) in enumerate(fields.values()):
        body.append(f"  i = {i}; v = offsetof(struct {struct}, {member}); "
                    "tt_offsets.update(&i, &v);")
    body += ["  return 0;", "}"]
    b = bcc.BPF(text="\n".join(body).encode(), cflags=["-w"])
    try:
        with socket.socket() as s:  # CLOSE > LISTEN > CLOSE: the program runs
            s.bind(("127.0.0.1", 0))
            s.listen()
        table = b["tt_offsets"]
        values = [int(table[ctypes.c_int(i)].value) for i in range(len(fields))]
        if not any(values):
            raise RuntimeError("the offset probe did not run")
        return dict(zip(fields, values))
    finally:
        b.cleanup()


def _header_offsets(r: Report, bcc, btf) -> None:
    fields = dict(loader.OFFSETS)
    if btf is not None:
        for name, (s, m) in loader.OPTIONAL_OFFSETS.items():
            try:
                btf.offsetof(s, m)
                fields[name] = (s, m)
            except BTFError:
                pass
    try:
        with loader.kernel_messages() as said:
            try:
                from_headers = header_offsets(bcc, fields)
            except Exception:  # an optional field the headers lack: compare the rest
                fields = dict(loader.OFFSETS)
                from_headers = header_offsets(bcc, fields)
    except Exception as exc:
        r.add("header offsets", "fail", f"cannot compile against the headers: "
              f"{said() or loader.first_line(exc)}", SETUP)
        return
    if btf is None:
        r.add("header offsets", "warn", "no BTF to compare with: programs use these offsets as is",
              "a kernel with BTF")
        return
    bad = []
    for name, (s, m) in fields.items():
        want = btf.offsetof(s, m)
        if from_headers[name] != want:
            bad.append({"field": f"{s}.{m}", "btf": want, "headers": from_headers[name]})
    r.offsets = {"compared": len(fields), "mismatched": bad}
    if not bad:
        r.add("header offsets", "ok", f"all {len(fields)} fields agree with BTF")
    else:
        shown = ", ".join(f"{b['field']} {b['headers']} vs {b['btf']}" for b in bad[:3])
        r.add("header offsets", "warn",
              f"{len(bad)} of {len(fields)} fields differ from BTF ({shown}"
              f"{', ...' if len(bad) > 3 else ''}): the programs read BTF offsets, so tracing "
              "is right; headers-only tools would misread them",
              "none needed while BTF is present")


def render(report: Report) -> str:
    lines = ["tcptrace-bpf check"]
    for c in report.checks:
        lines.append(f"  {c.status.upper():<5} {c.name}: {c.detail}")
        if c.remedy and c.status != "ok":
            lines.append(f"        remedy: {c.remedy}")
    verdict = f"yes (auto chooses {report.backends[0]})" if report.ok else "no"
    lines.append(f"tracing can work: {verdict}")
    return "\n".join(lines)
