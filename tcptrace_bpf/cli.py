"""Command line: declares options, wires a session (live or replayed) to a sink, turns
errors into one line and an exit code:
  0 done; 1 tracing could not start or failed (privileges, backend, headers, port);
  2 bad usage (flag, value, filter); 3 a recording that cannot be read (missing, corrupt,
  truncated, from an unknown version)."""

from __future__ import annotations

import json
import os
import platform
import sys
from dataclasses import replace
from enum import Enum
from pathlib import Path
from typing import Optional, TextIO

import typer

from . import __version__
from .endpoint import DEFAULT_LISTEN, ListenError
from .loader import LoaderError, Settings
from .recording import RecordingError
from .sinks import Discard, RunStart, jsonl, text
from .summary import RunSummary
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


def _finish(summary: RunSummary, summary_json: Optional[TextIO]) -> None:
    """The text summary on stderr, always; with --summary-json, the JSON document too."""
    print(text.summary(summary), file=sys.stderr)
    if summary_json is not None:
        doc = json.dumps(summary.to_dict(), separators=(",", ":"))
        summary_json.write(doc + "\n")
        summary_json.flush()
        if summary_json is not sys.stderr:
            summary_json.close()


def _summary_json(value: Optional[str]) -> Optional[TextIO]:
    """--summary-json FILE|-: opened (FILE truncated) before the run, so a bad path is a usage
    error now, not after the run."""
    if value is None:
        return None
    if value == "-":
        return sys.stderr
    try:
        return open(value, "w")
    except OSError as exc:
        raise typer.BadParameter(f"cannot write {value}: {exc.strerror}") from None


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
FAILED = typer.Option(False, "--failed", help="Only opens whose outcome is not established.")
SLOW = typer.Option(None, "--slow", min=0.0, metavar="SECONDS",
                    help="Only opens that took at least SECONDS or re-sent a SYN or SYN-ACK "
                         "(with --failed: opens that match either).")
# declared as a str for typer; the callback hands the command an open stream (or None)
SUMMARY_JSON = typer.Option(None, "--summary-json", callback=_summary_json, metavar="FILE|-",
                            help="At exit, also write the summary as one JSON document to "
                                 "FILE (- : one line on stderr). Keys: README.")


def _match(port, family, pid, netns, cgroup, failed=False, slow=None) -> Match:
    return Match(port=port, family=int(family.value) if family else None, pid=pid,
                 netns=netns, cgroup=cgroup, failed=failed, slow=slow)


def _live(attach, max_sockets, events, duration, half_open, match=Match()):
    from .session import Options
    return Options(attach=attach.value, match=match, duration=duration,
                   settings=Settings(max_sockets=max_sockets, events=events),
                   half_open_timeout=half_open)


def _printer(json_out: bool):
    """Lines into stdout's buffer, sent once per poll."""
    return jsonl.sink() if json_out else text.sink()


class _Serving:
    """The Prometheus endpoint as a sink: its metrics count the opens, self-metrics join
    once the run says its backend. Ready (a scrape sees a whole exposition) at start for
    live export, at close for a replay (the whole recording is in)."""

    def __init__(self, exporter, ready_at_start: bool, max_listener_ports: int = 64):
        self.exporter, self.ready_at_start = exporter, ready_at_start
        self.max_listener_ports = max_listener_ports
        self.emit = exporter.metrics.observe

    def start(self, run: RunStart) -> None:
        if run.aggregates:  # export mode: the kernel counts the opens
            self.exporter.count_in_kernel(run.aggregates)
        # a replay (or a kernel without the listener side) serves the families, empty
        self.exporter.add_listener_metrics(run.listen_ports or dict, run.listeners or list,
                                           self.max_listener_ports)
        self.exporter.add_self_metrics(run.backend, run.lost, run.tracked)
        if self.ready_at_start:
            self.exporter.ready()

    def flush(self) -> None:
        pass  # read at scrape time

    def close(self, summary: RunSummary) -> None:
        if not self.ready_at_start:
            self.exporter.ready()


@app.command(epilog=EXAMPLES)
def trace(
    json_out: bool = typer.Option(False, "--json", help="One JSON object per line."),
    port: Optional[int] = PORT, family: Optional[Family] = FAMILY, pid: Optional[int] = PID,
    netns: Optional[str] = NETNS, cgroup: Optional[str] = CGROUP,
    failed: bool = FAILED, slow: Optional[float] = SLOW,
    duration: Optional[float] = DURATION, attach: Attach = ATTACH,
    events: bool = typer.Option(False, "--events", help="Also print every raw probe event."),
    max_sockets: int = MAX_SOCKETS, half_open_timeout: float = HALF_OPEN,
    listener_interval: float = typer.Option(
        1.0, min=0.1, help="At most one line per listener per this many seconds, for "
        "listeners that dropped SYNs or ACKs, sent SYN cookies or re-sent SYN-ACKs."),
    summary_json: Optional[str] = SUMMARY_JSON,
):
    """Print one line per connection-open attempt when it resolves, and per listener in
    trouble each interval; a summary at exit."""
    from .session import run
    opts = _live(attach, max_sockets, events, duration, half_open_timeout,
                 _match(port, family, pid, netns, cgroup, failed, slow))
    opts.listener_interval, opts.listener_lines = listener_interval, True
    try:
        summary = run(opts, _printer(json_out),
                      announce=lambda m: _say(m + "; tracing, Ctrl-C to stop"))
    except LoaderError as exc:
        raise _fail(str(exc), EXIT_TRACE)
    except BrokenPipeError:
        raise typer.Exit(0)
    _finish(summary, summary_json)


@app.command()
def record(
    file: Path = typer.Argument(..., help="Recording to write (replaced if it exists)."),
    duration: Optional[float] = DURATION, attach: Attach = ATTACH,
    events: bool = typer.Option(False, "--events", help="Also record every raw probe event."),
    max_sockets: int = MAX_SOCKETS, half_open_timeout: float = HALF_OPEN,
    summary_json: Optional[str] = SUMMARY_JSON,
):
    """Record the kernel's records to FILE for `replay` elsewhere; a summary at exit."""
    from .recording import Recorder
    from .session import run
    try:
        f = open(file, "wb")
    except OSError as exc:
        raise _fail(f"cannot write {file}: {exc.strerror}", EXIT_TRACE)
    recorder = Recorder(f, platform.release(), events, __version__)
    try:
        with f:
            summary = run(_live(attach, max_sockets, events, duration, half_open_timeout),
                          Discard(), raw=recorder,
                          announce=lambda m: _say(f"{m}; recording to {file}, Ctrl-C to stop"))
    except LoaderError as exc:
        file.unlink(missing_ok=True)
        raise _fail(str(exc), EXIT_TRACE)
    summary.records_written = recorder.records
    _finish(summary, summary_json)


@app.command()
def replay(
    file: str = typer.Argument(..., help="A recording made by `record`."),
    json_out: bool = typer.Option(False, "--json", help="One JSON object per line."),
    listen: Optional[str] = typer.Option(None, help="Instead of printing, serve the replayed "
                                         "opens as Prometheus metrics on HOST:PORT until Ctrl-C."),
    port: Optional[int] = PORT, family: Optional[Family] = FAMILY, pid: Optional[int] = PID,
    netns: Optional[str] = NETNS, cgroup: Optional[str] = CGROUP,
    failed: bool = FAILED, slow: Optional[float] = SLOW,
    duration: Optional[float] = typer.Option(None, min=0.0, help="With --listen: serve this "
                                             "many seconds, then exit."),
    summary_json: Optional[str] = SUMMARY_JSON,
):
    """Feed a recording to the same tracker and outputs as live; needs no privileges."""
    from .replay import replay as run_replay
    from .session import Signals
    match = _match(port, family, pid, netns, cgroup, failed, slow)
    exporter = None
    if listen:
        from .endpoint import NOT_REPLAYED_YET, Exporter, ServeOptions
        try:
            # 503 until the whole recording is in: a scrape never sees part of it
            exporter = Exporter(ServeOptions(listen=listen), waiting=NOT_REPLAYED_YET)
        except ListenError as exc:
            raise _fail(str(exc), EXIT_TRACE)
        sink = _Serving(exporter, ready_at_start=False)
    else:
        sink = _printer(json_out)
    try:
        summary = run_replay(file, match, sink)
    except RecordingError as exc:
        if exporter:
            exporter.close()
        raise _fail(str(exc), EXIT_RECORDING)
    except BrokenPipeError:
        raise typer.Exit(0)
    _finish(summary, summary_json)
    if exporter:
        _say(f"serving http://{listen}/metrics, Ctrl-C to stop")
        with Signals() as signals:
            signals.wait(duration)
        exporter.close()


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
    max_listener_ports: int = typer.Option(
        64, min=1, help="Listening ports with series of their own; more fold into port=\"other\"."),
    summary_json: Optional[str] = SUMMARY_JSON,
):
    """Serve Prometheus metrics of every connection open on /metrics (metric names: README).
    The port is bound first; /metrics answers 503 until the probes are attached. /-/ready
    (200 once tracing) and /-/healthy (200 while serving) are for container probes."""
    from .endpoint import Exporter, ServeOptions
    from .session import run

    serve = ServeOptions(listen, tls_cert, tls_key, basic_auth_user, basic_auth_password_file)
    try:
        exporter = Exporter(serve)
    except ListenError as exc:
        raise _fail(str(exc), EXIT_TRACE)

    # opens are classified and counted in the kernel; only request sockets that re-send
    # SYN-ACKs still cross the ring buffer (the tracker expires them)
    opts = _live(attach, max_sockets, False, None, half_open_timeout)
    opts.settings = replace(opts.settings, aggregate_buckets=tuple(exporter.buckets))
    try:
        # ready once the probes are attached: from then on every open is counted
        summary = run(opts, _Serving(exporter, ready_at_start=True,
                                     max_listener_ports=max_listener_ports),
                      announce=lambda m: _say(f"{m}; serving {serve.url}"))
    except LoaderError as exc:
        raise _fail(str(exc), EXIT_TRACE)
    finally:
        exporter.close()
    _finish(summary, summary_json)


@app.command()
def listeners(
    once: bool = typer.Option(False, "--once", help="Print one table and exit."),
    json_out: bool = typer.Option(False, "--json", help="One JSON document, then exit."),
    interval: float = typer.Option(1.0, min=0.1, help="Seconds between refreshes (and the "
                                   "window of opens/s)."),
    attach: Attach = ATTACH, duration: Optional[float] = DURATION,
):
    """A live table of every listener on the host, worst first: accept queue now/limit, SYN
    queue, drops by reason, SYN cookies sent, SYN-ACKs re-sent and passive opens per second
    (counts since the command started)."""
    import time as clock
    from rich.console import Console
    from rich.live import Live
    from .session import watch_listeners
    from .sinks.listen_table import json_document, rich_table

    # a pipe or file gets the whole table, not 80 columns of it
    console = Console() if sys.stdout.isatty() else Console(width=200)
    title = "tcptrace-bpf listeners (counts since start; Ctrl-C to stop)"

    def show_once(rows, window) -> bool:
        if json_out:
            print(json_document(rows, clock.time(), round(window, 3)), flush=True)
        else:
            console.print(rich_table(rows, title))
        return False

    try:
        if once or json_out:
            watch_listeners(attach.value, interval, show_once, duration,
                            announce=lambda m: _say(f"{m}; table in {interval:g}s"))
            return
        with Live(console=console, auto_refresh=False) as live:
            def show(rows, _window) -> bool:
                live.update(rich_table(rows, title), refresh=True)
                return True
            watch_listeners(attach.value, interval, show, duration, announce=_say)
    except LoaderError as exc:
        raise _fail(str(exc), EXIT_TRACE)


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
