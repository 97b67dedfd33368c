"""The /metrics endpoint as `export` and `replay --listen` share it: validated options, a socket
bound before any BPF loads (so a busy port fails fast), and the metrics sink behind it.

Paths, in the style of Prometheus itself:
  /metrics    prometheus-client's own WSGI app; 503 with a one-line reason (and no series)
              until the caller says ready(); behind basic auth if configured
  /-/ready    200 "tcptrace-bpf is ready." once ready, 503 with the reason before
  /-/healthy  200 while the process serves
  anything else: 404. The probes are not behind basic auth (README: Readiness).

No `*_created` series: the collectors build their families at scrape time without creation
timestamps, so nothing needs prometheus-client's process-wide disable_created_metrics()."""

from __future__ import annotations

import base64
import hmac
import ipaddress
import socket
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional
from wsgiref.simple_server import WSGIRequestHandler

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from . import __version__
from .buckets import buckets_from_sysctls
from .sinks.prometheus import HandshakeMetrics, ListenerMetrics, SelfMetrics

DEFAULT_LISTEN = "127.0.0.1:9725"
METRICS, READY, HEALTHY = "/metrics", "/-/ready", "/-/healthy"
# a client that connects and then says nothing (no TLS hello, no request) holds only its own
# thread, and only this long
REQUEST_TIMEOUT = 30.0
# the one-line reasons /metrics and /-/ready give before ready(), after "tcptrace-bpf: "
NOT_TRACING_YET = "not tracing yet: compiling and attaching BPF programs"
NOT_REPLAYED_YET = "not ready yet: replaying the recording"


class ListenError(Exception):
    """The endpoint cannot be served; the message says why."""


@dataclass(frozen=True)
class Endpoint:
    """Where and how to serve, resolved: an IP address, a port, readable credentials."""
    host: str
    port: int
    tls_cert: Optional[str] = None
    tls_key: Optional[str] = None
    auth_user: Optional[str] = None
    auth_password: Optional[str] = None


@dataclass(frozen=True)
class ServeOptions:
    """The endpoint as the command line gives it (--listen, --tls-*, --basic-auth-*)."""
    listen: str = DEFAULT_LISTEN
    tls_cert: Optional[Path] = None
    tls_key: Optional[Path] = None
    basic_auth_user: Optional[str] = None
    basic_auth_password_file: Optional[Path] = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls_cert else 'http'}://{self.listen}/metrics"

    def endpoint(self) -> Endpoint:
        """Validated, the password read. ListenError (one line) for anything wrong."""
        host, port = parse_listen(self.listen)
        password = None
        if self.basic_auth_user:
            if not self.basic_auth_password_file:
                raise ListenError("--basic-auth-user needs --basic-auth-password-file")
            try:
                password = self.basic_auth_password_file.read_text().strip()
            except OSError as exc:
                raise ListenError(f"cannot read {self.basic_auth_password_file}: "
                                  f"{exc.strerror}") from None
        if self.tls_key and not self.tls_cert:
            raise ListenError("--tls-key needs --tls-cert")
        return Endpoint(host, port, str(self.tls_cert) if self.tls_cert else None,
                        str(self.tls_key) if self.tls_key else None, self.basic_auth_user,
                        password)


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ListenError(f"--listen {value!r}: expected HOST:PORT, e.g. {DEFAULT_LISTEN}")
    host = host.strip("[]") or "0.0.0.0"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ListenError(f"--listen {value!r}: {host!r} is not an IP address") from None
    return host, int(port)


class Readiness:
    """Whether /metrics serves the exposition yet. Set by the session's thread, read by each
    request's (a single attribute: no lock needed)."""

    def __init__(self, waiting: Optional[str] = None):
        self.waiting = waiting  # one line: why not ready yet; None once ready

    def set_ready(self) -> None:
        self.waiting = None


# ----------------------------------------------------------------------------- routing
def _text(start_response, status: str, body: str, environ, extra=()):
    data = (body + "\n").encode()
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"),
                            ("Content-Length", str(len(data))), *extra])
    return [b"" if environ.get("REQUEST_METHOD") == "HEAD" else data]


def make_app(registry: CollectorRegistry, readiness: Readiness,
             auth_user: Optional[str] = None, auth_password: Optional[str] = None):
    """The WSGI app: routes the three paths; /metrics goes to prometheus-client's app."""
    metrics = make_wsgi_app(registry)
    want = None
    if auth_user:
        want = ("Basic " + base64.b64encode(f"{auth_user}:{auth_password or ''}".encode())
                .decode()).encode()

    def not_ready(environ, start_response):
        """503 with the one line saying why, while the probes are not attached; else None"""
        waiting = readiness.waiting
        if waiting is None:
            return None
        return _text(start_response, "503 Service Unavailable", f"tcptrace-bpf: {waiting}", environ)

    def app(environ, start_response):
        path, method = environ.get("PATH_INFO", ""), environ.get("REQUEST_METHOD", "GET")
        if path == METRICS:
            # header values arrive latin-1 decoded: compared as bytes, any byte is just wrong
            if want and not hmac.compare_digest(
                    environ.get("HTTP_AUTHORIZATION", "").encode("latin-1", "replace"), want):
                return _text(start_response, "401 Unauthorized", "unauthorized", environ,
                             [("WWW-Authenticate", 'Basic realm="tcptrace-bpf"')])
            return not_ready(environ, start_response) or metrics(environ, start_response)
        if path not in (READY, HEALTHY):
            return _text(start_response, "404 Not Found",
                         f"not found; paths: {METRICS} {READY} {HEALTHY}", environ)
        if method not in ("GET", "HEAD"):
            return _text(start_response, "405 Method Not Allowed", "use GET or HEAD", environ,
                         [("Allow", "GET, HEAD")])
        if path == HEALTHY:
            return _text(start_response, "200 OK", "tcptrace-bpf is healthy.", environ)
        return (not_ready(environ, start_response)
                or _text(start_response, "200 OK", "tcptrace-bpf is ready.", environ))
    return app


# ------------------------------------------------------------------------------ server
class _Quiet(WSGIRequestHandler):
    timeout = REQUEST_TIMEOUT

    def log_message(self, *args):  # scrapes are not news
        pass


class _Server(ThreadingWSGIServer):
    """prometheus-client's thread-per-request server, with two changes made per instance or
    per request, never on a shared class: the address family (servers on v4 and v6 live in one
    process) and the TLS handshake (in the request's own thread)."""

    def __init__(self, family: socket.AddressFamily, address: tuple[str, int], handler):
        self.address_family = family  # TCPServer.__init__ makes its socket from it
        super().__init__(address, handler)

    def finish_request(self, request, client_address):
        # in the request's own thread: a TLS client that never completes its handshake must
        # not hold up accept() (and with it /-/healthy) for everyone else
        request.settimeout(REQUEST_TIMEOUT)
        if isinstance(request, ssl.SSLSocket):
            request.do_handshake()
        super().finish_request(request, client_address)

    def handle_error(self, request, client_address):
        pass  # a client that drops mid-request, or fails the TLS handshake


def serve(ep: Endpoint, registry: CollectorRegistry,
          readiness: Optional[Readiness] = None) -> _Server:
    """Bind and serve in a daemon thread. Without `readiness`, ready from the start."""
    family = socket.AF_INET6 if ":" in ep.host else socket.AF_INET
    try:
        server = _Server(family, (ep.host, ep.port), _Quiet)
    except OSError as exc:
        raise ListenError(f"cannot listen on {ep.host}:{ep.port}: {exc.strerror}") from None
    server.set_app(make_app(registry, readiness or Readiness(), ep.auth_user, ep.auth_password))
    if ep.tls_cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            ctx.load_cert_chain(ep.tls_cert, ep.tls_key)
        except (OSError, ssl.SSLError) as exc:
            server.server_close()
            raise ListenError(f"cannot use TLS certificate {ep.tls_cert}: "
                              f"{getattr(exc, 'strerror', None) or exc}") from None
        server.socket = ctx.wrap_socket(server.socket, server_side=True,
                                        do_handshake_on_connect=False)
    threading.Thread(target=server.serve_forever, daemon=True, name="metrics").start()
    return server


# ---------------------------------------------------------------------------- exporter
class Exporter:
    """The endpoint with tcptrace-bpf's collectors on a registry of its own. Raises
    ListenError (one line) for anything wrong with the options or the port. Serves 503
    ("tcptrace-bpf: " + `waiting`) on /metrics and /-/ready until ready() (export: once its
    probes are attached; replay: once the recording is loaded)."""

    def __init__(self, opts: ServeOptions, waiting: str = NOT_TRACING_YET):
        ep = opts.endpoint()
        self.registry = CollectorRegistry()
        self.buckets = buckets_from_sysctls()
        self.metrics = HandshakeMetrics(self.buckets)
        self.registry.register(self.metrics)
        self.readiness = Readiness(waiting)
        self.server = serve(ep, self.registry, self.readiness)

    def ready(self) -> None:
        """From now on /metrics serves the exposition and /-/ready answers 200. Call it once
        every collector is registered (a scrape never sees a partial exposition)."""
        self.readiness.set_ready()

    def count_in_kernel(self, aggregates: Callable[[], dict]) -> None:
        """Export mode: add the kernel's counters (loader.BpfPrograms.aggregates) at each scrape."""
        self.metrics.kernel = aggregates

    def add_listener_metrics(self, ports: Callable[[], dict], listeners: Callable[[], list],
                             max_ports: int) -> None:
        self.registry.register(ListenerMetrics(ports, listeners, max_ports))

    def add_self_metrics(self, backend: str, lost: Callable[[], dict],
                         tracked: Callable[[], int]) -> None:
        self.registry.register(SelfMetrics(__version__, backend, lost, tracked))

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
