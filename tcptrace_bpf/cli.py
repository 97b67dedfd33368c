"""Command line: declares options, wires a session to a sink, turns errors into one line
and an exit code (0 ok, 1 tracing could not start or failed, 2 bad usage)."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from . import __version__
from .http import DEFAULT_LISTEN
from .loader import LoaderError, Settings
from .session import Options, run
from .sinks import jsonl, text
from .tracker import Match

EXAMPLES = """
Examples:\n
  tcptrace-bpf trace                      # every connection open, as it resolves\n
  tcptrace-bpf trace --json --port 443    # JSON lines for opens to/from port 443\n
  tcptrace-bpf trace --duration 60 --family 6 > opens.txt\n
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


def _summary(tracker, end: dict) -> None:
    extra = dict(end["extra"])
    backend = extra.pop("backend")
    print(text.summary(tracker.counts, end["lost"], backend, extra), file=sys.stderr)


@app.command(epilog=EXAMPLES)
def trace(
    json_out: bool = typer.Option(False, "--json", help="One JSON object per line."),
    port: Optional[int] = typer.Option(None, min=1, max=65535, help="Only opens with this local or peer port."),
    family: Optional[Family] = typer.Option(None, help="Only IPv4 (4) or IPv6 (6)."),
    duration: Optional[float] = typer.Option(None, min=0.0, help="Stop after this many seconds."),
    attach: Attach = typer.Option(Attach.auto, help="Backend; auto tries fentry, kprobe, tracepoint by trial load."),
    events: bool = typer.Option(False, "--events", help="Also print every raw probe event."),
    max_sockets: int = typer.Option(65536, min=64, help="Kernel table size: handshakes tracked at once."),
):
    """Print one line per connection-open attempt when it resolves; a summary at exit."""
    render = jsonl.render if json_out else text.render
    out = sys.stdout
    opts = Options(attach=attach.value,
                   match=Match(port=port, family=int(family.value) if family else None),
                   duration=duration,
                   settings=Settings(max_sockets=max_sockets, events=events))
    try:
        tracker, end = run(opts, emit=lambda item: out.write(render(item) + "\n"),
                           flush=out.flush, announce=lambda m: _say(m + "; tracing, Ctrl-C to stop"))
    except LoaderError as exc:
        _say(f"error: {exc}")
        raise typer.Exit(1)
    except BrokenPipeError:
        raise typer.Exit(0)
    _summary(tracker, end)


@app.command(epilog=EXPORT_EXAMPLES)
def export(
    listen: str = typer.Option(DEFAULT_LISTEN, help="HOST:PORT to serve /metrics on. "
                               "Loopback by default; 0.0.0.0:PORT exposes it to the network."),
    attach: Attach = typer.Option(Attach.auto, help="Backend, as for trace."),
    tls_cert: Optional[Path] = typer.Option(None, help="Serve HTTPS with this PEM certificate."),
    tls_key: Optional[Path] = typer.Option(None, help="Private key of --tls-cert (if not inside it)."),
    basic_auth_user: Optional[str] = typer.Option(None, help="Require HTTP basic auth as this user."),
    basic_auth_password_file: Optional[Path] = typer.Option(None, help="File holding that user's password."),
    max_sockets: int = typer.Option(65536, min=64, help="Kernel table size: handshakes tracked at once."),
):
    """Serve Prometheus metrics of every connection open (metric names: README)."""
    from prometheus_client import CollectorRegistry

    from . import http
    from .buckets import buckets_from_sysctls
    from .session import lost_events
    from .sinks.prometheus import OpenMetrics, SelfMetrics

    try:
        host, port = http.parse_listen(listen)
        password = None
        if basic_auth_user:
            if not basic_auth_password_file:
                raise http.ListenError("--basic-auth-user needs --basic-auth-password-file")
            try:
                password = basic_auth_password_file.read_text().strip()
            except OSError as exc:
                raise http.ListenError(f"cannot read {basic_auth_password_file}: {exc.strerror}") from None
        if tls_key and not tls_cert:
            raise http.ListenError("--tls-key needs --tls-cert")
        registry = CollectorRegistry()
        metrics = OpenMetrics(registry, buckets_from_sysctls())
        server = http.serve(http.Endpoint(host, port, str(tls_cert) if tls_cert else None,
                                          str(tls_key) if tls_key else None,
                                          basic_auth_user, password), registry)
    except http.ListenError as exc:
        _say(f"error: {exc}")
        raise typer.Exit(1)

    def on_start(tracer, tracker):
        registry.register(SelfMetrics(__version__, tracer.caps.backend.value,
                                      lambda: lost_events(tracer, tracker), tracer.tracked_sockets))

    scheme = "https" if tls_cert else "http"
    opts = Options(attach=attach.value, settings=Settings(max_sockets=max_sockets))
    try:
        tracker, end = run(opts, emit=metrics.observe, flush=lambda: None, on_start=on_start,
                           announce=lambda m: _say(f"{m}; serving {scheme}://{listen}/metrics"))
    except LoaderError as exc:
        _say(f"error: {exc}")
        raise typer.Exit(1)
    finally:
        server.shutdown()
    _summary(tracker, end)


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
