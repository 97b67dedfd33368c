"""Command line: declares options, wires a session (live or replayed) to a sink, turns
errors into one line and an exit code:
  0 done; 1 tracing could not start or failed (privileges, backend, headers, port);
  2 bad usage (flag, value, filter); 3 a recording that cannot be read (missing, corrupt,
  truncated, from an unknown version)."""

from __future__ import annotations

import json
import os
import platform
import signal
import sys
import time
from dataclasses import replace
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from . import __version__
from .http import DEFAULT_LISTEN, ListenError
from .loader import LoaderError, Settings
from .recording import RecordingError
from .sinks import jsonl, text
from .tracker import Match

EXIT_TRACE, EXIT_USAGE, EXIT_RECORDING = 1, 2, 3

EXAMPLES = """
Examples:\n
  tcptrace-bpf trace                      # every connection open, as it resolves\n
  tcptrace-bpf trace --json --port 443    # JSON lines for opens to/from port 443\n
  tcptrace-bpf trace --netns /run/netns/blue --pid 1234\n
  tcptrace-bpf trace --attach tracepoint  # force the tracepoint backend
"""

EXPORT_EXAMPLES = f"""
Examples:\n
  tcptrace-bpf export                       # http://{DEFAULT_LISTEN}/metrics\n
  tcptrace-bpf export --listen 0.0.0.0:9725 --tls-cert cert.pem --tls-key key.pem
"""

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                  help="Shows how every TCP connection on this host was opened, and why a "
                       "handshake went wrong.")


class Attach(str, Enum):
    auto = "auto"
    fentry = "fentry"
    kprobe = "kprobe"
    tracepoint = "tracepoint"


class Family(str, Enum):
    v4 = "4"
    v6 = "6"


def _say(msg: str) -> None:
    print(f"tcptrace-bpf: {msg}", file=sys.stderr, flush=True)


def _fail(msg: str, code: int) -> typer.Exit:
    _say(f"error: {msg}")
    return typer.Exit(code)


def _summary(tracker, end: dict) -> None:
    extra = dict(end["extra"])
    backend = extra.pop("backend")
    print(text.summary(tracker.counts, end["lost"], backend, extra), file=sys.stderr)


def _inode(what: str):
    """A number, or a path whose inode is the id (/proc/PID/ns/net, /run/netns/NAME, a
    cgroup directory)."""
    def parse(value: Optional[str]) -> Optional[int]:
        if value is None:
            return None
        if value.isdigit():
            return int(value)
        try:
            return os.stat(value).st_ino
        except OSError as exc:
            raise typer.BadParameter(f"{value!r} is neither a {what} id nor a path to one "
                                     f"({exc.strerror})") from None
    return parse


# -- options shared by several commands ----------------------------------------------------
ATTACH = typer.Option(Attach.auto, help="Backend; auto tries fentry, kprobe, tracepoint by trial load.")
MAX_SOCKETS = typer.Option(65536, min=64, help="Kernel table size: handshakes tracked at once.")
HALF_OPEN = typer.Option(300.0, min=1.0, help="Drop (and count) a tracked handshake with no "
                         "activity for this many seconds.")
DURATION = typer.Option(None, min=0.0, help="Stop after this many seconds.")
PORT = typer.Option(None, min=1, max=65535, help="Only opens with this local or peer port.")
FAMILY = typer.Option(None, help="Only IPv4 (4) or IPv6 (6).")
PID = typer.Option(None, min=1, help="Only opens of this process (connect() caller or listener owner).")
NETNS = typer.Option(None, callback=_inode("network namespace"), metavar="INODE|PATH",
                     help="Only this network namespace: inode, /proc/PID/ns/net or /run/netns/NAME.")
CGROUP = typer.Option(None, callback=_inode("cgroup"), metavar="ID|PATH",
                      help="Only this cgroup (v2): id, or its directory under the cgroup2 mount.")


def _match(port, family, pid, netns, cgroup) -> Match:
    return Match(port=port, family=int(family.value) if family else None, pid=pid,
                 netns=netns, cgroup=cgroup)


def _live(attach, max_sockets, events, duration, half_open, match=Match()):
    from .session import Options
    return Options(attach=attach.value, match=match, duration=duration,
                   settings=Settings(max_sockets=max_sockets, events=events),
                   half_open_timeout=half_open)


def _printer(json_out: bool):
    """emit() writes a line into stdout's buffer; flush() (once per poll) sends it."""
    render = jsonl.render if json_out else text.render
    write = sys.stdout.write
    return (lambda item: write(render(item) + "\n")), sys.stdout.flush


@app.command(epilog=EXAMPLES)
def trace(
    json_out: bool = typer.Option(False, "--json", help="One JSON object per line."),
    port: Optional[int] = PORT, family: Optional[Family] = FAMILY, pid: Optional[int] = PID,
    netns: Optional[str] = NETNS, cgroup: Optional[str] = CGROUP,
    duration: Optional[float] = DURATION, attach: Attach = ATTACH,
    events: bool = typer.Option(False, "--events", help="Also print every raw probe event."),
    max_sockets: int = MAX_SOCKETS, half_open_timeout: float = HALF_OPEN,
):
    """Print one line per connection-open attempt when it resolves; a summary at exit."""
    from .session import run
    emit, flush = _printer(json_out)
    opts = _live(attach, max_sockets, events, duration, half_open_timeout,
                 _match(port, family, pid, netns, cgroup))
    try:
        tracker, end = run(opts, emit=emit, flush=flush,
                           announce=lambda m: _say(m + "; tracing, Ctrl-C to stop"))
    except LoaderError as exc:
        raise _fail(str(exc), EXIT_TRACE)
    except BrokenPipeError:
        raise typer.Exit(0)
    _summary(tracker, end)


@app.command()
def record(
    file: Path = typer.Argument(..., help="Recording to write (replaced if it exists)."),
    duration: Optional[float] = DURATION, attach: Attach = ATTACH,
    events: bool = typer.Option(False, "--events", help="Also record every raw probe event."),
    max_sockets: int = MAX_SOCKETS, half_open_timeout: float = HALF_OPEN,
):
    """Record the kernel's records to FILE for `replay` elsewhere; a summary at exit."""
    from . import recording
    from .session import run
    try:
        f = open(file, "wb")
    except OSError as exc:
        raise _fail(f"cannot write {file}: {exc.strerror}", EXIT_TRACE)
    writer = {}

    def on_start(tracer, tracker):
        writer["w"] = recording.Writer(f, recording.Header(
            kernel=platform.release(), backend=tracer.caps.backend.value,
            epoch_offset=tracker.epoch_offset, events=events, tool_version=__version__))

    try:
        with f:
            tracker, end = run(_live(attach, max_sockets, events, duration, half_open_timeout),
                               emit=lambda item: None, flush=f.flush, on_start=on_start,
                               on_raw=lambda raw: writer["w"].record(raw),
                               announce=lambda m: _say(f"{m}; recording to {file}, Ctrl-C to stop"))
            writer["w"].close(recording.Trailer(end["ended_ns"], end["kernel_lost"]))
    except LoaderError as exc:
        f.close()
        file.unlink(missing_ok=True)
        raise _fail(str(exc), EXIT_TRACE)
    end["extra"]["records written"] = writer["w"].records
    _summary(tracker, end)


@app.command()
def replay(
    file: str = typer.Argument(..., help="A recording made by `record`."),
    json_out: bool = typer.Option(False, "--json", help="One JSON object per line."),
    listen: Optional[str] = typer.Option(None, help="Instead of printing, serve the replayed "
                                         "opens as Prometheus metrics on HOST:PORT until Ctrl-C."),
    port: Optional[int] = PORT, family: Optional[Family] = FAMILY, pid: Optional[int] = PID,
    netns: Optional[str] = NETNS, cgroup: Optional[str] = CGROUP,
    duration: Optional[float] = typer.Option(None, min=0.0, help="With --listen: serve this "
                                             "many seconds, then exit."),
):
    """Feed a recording to the same tracker and outputs as live; needs no privileges."""
    from .replay import replay as run_replay
    match = _match(port, family, pid, netns, cgroup)
    exporter = None
    if listen:
        from .exporter import NOT_REPLAYED_YET, Exporter, ServeOptions
        try:
            # 503 until the whole recording is in: a scrape never sees part of it
            exporter = Exporter(ServeOptions(listen=listen), waiting=NOT_REPLAYED_YET)
        except ListenError as exc:
            raise _fail(str(exc), EXIT_TRACE)
        emit, flush = exporter.metrics.observe, (lambda: None)
    else:
        emit, flush = _printer(json_out)
    try:
        tracker, end = run_replay(file, match, emit, flush)
    except RecordingError as exc:
        if exporter:
            exporter.close()
        raise _fail(str(exc), EXIT_RECORDING)
    except BrokenPipeError:
        raise typer.Exit(0)
    _summary(tracker, end)
    if exporter:
        lost = end["lost"]
        exporter.add_self_metrics(end["extra"]["backend"].split()[0], lambda: lost, lambda: 0)
        exporter.ready()
        _say(f"serving http://{listen}/metrics, Ctrl-C to stop")
        _wait(duration)
        exporter.close()


def _wait(duration: Optional[float]) -> None:
    stop = {"now": False}
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, lambda *_: stop.update(now=True))
    deadline = None if duration is None else time.monotonic() + duration
    while not stop["now"] and (deadline is None or time.monotonic() < deadline):
        time.sleep(0.1)


@app.command(epilog=EXPORT_EXAMPLES)
def export(
    listen: str = typer.Option(DEFAULT_LISTEN, help="HOST:PORT to serve /metrics on. "
                               "Loopback by default; 0.0.0.0:PORT exposes it to the network."),
    attach: Attach = ATTACH,
    tls_cert: Optional[Path] = typer.Option(None, help="Serve HTTPS with this PEM certificate."),
    tls_key: Optional[Path] = typer.Option(None, help="Private key of --tls-cert (if not inside it)."),
    basic_auth_user: Optional[str] = typer.Option(None, help="Require HTTP basic auth as this user."),
    basic_auth_password_file: Optional[Path] = typer.Option(None, help="File holding that user's password."),
    max_sockets: int = MAX_SOCKETS, half_open_timeout: float = HALF_OPEN,
):
    """Serve Prometheus metrics of every connection open on /metrics (metric names: README).
    The port is bound first; /metrics answers 503 until the probes are attached. /-/ready
    (200 once tracing) and /-/healthy (200 while serving) are for container probes."""
    from .exporter import Exporter, ServeOptions
    from .session import lost_events, run

    serve = ServeOptions(listen, tls_cert, tls_key, basic_auth_user, basic_auth_password_file)
    try:
        exporter = Exporter(serve)
    except ListenError as exc:
        raise _fail(str(exc), EXIT_TRACE)

    def on_start(tracer, tracker):
        # the probes are attached (Tracer.start): from here every open is counted
        exporter.count_in_kernel(tracer.aggregates)
        exporter.add_self_metrics(tracer.caps.backend.value, lambda: lost_events(tracer, tracker),
                                  tracer.tracked_sockets)
        exporter.ready()

    # opens are classified and counted in the kernel; only request sockets that re-send
    # SYN-ACKs still cross the ring buffer (the tracker expires them)
    opts = _live(attach, max_sockets, False, None, half_open_timeout)
    opts.settings = replace(opts.settings, aggregate_buckets=tuple(exporter.buckets))
    try:
        tracker, end = run(opts,
                           emit=exporter.metrics.observe, flush=lambda: None, on_start=on_start,
                           announce=lambda m: _say(f"{m}; serving {serve.url}"))
    except LoaderError as exc:
        raise _fail(str(exc), EXIT_TRACE)
    finally:
        exporter.close()
    _summary(tracker, end)


@app.command()
def check(json_out: bool = typer.Option(False, "--json", help="One JSON object.")):
    """Can tracing work here? Trial loads every backend, compares BTF and header offsets,
    checks privileges; each problem with its remedy. Exit 0 only if tracing can work."""
    from . import check as checks
    report = checks.run()
    print(json.dumps(report.to_dict(), indent=1) if json_out else checks.render(report))
    raise typer.Exit(0 if report.ok else EXIT_TRACE)


@app.command()
def version():
    """Print the version."""
    print(__version__)


def main() -> None:
    try:
        rc = app(standalone_mode=False)
    except typer.Exit as exc:
        rc = exc.exit_code
    except (typer.Abort, KeyboardInterrupt):
        rc = 130
    except Exception as exc:
        # click's usage errors (bad flag or value), whichever click typer ships
        if not (hasattr(exc, "format_message") and hasattr(exc, "exit_code")):
            raise
        _say(f"error: {exc.format_message()} (see --help)")
        rc = exc.exit_code
    sys.exit(rc if isinstance(rc, int) else 0)


if __name__ == "__main__":
    main()
