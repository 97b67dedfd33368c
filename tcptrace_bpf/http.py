"""The HTTP endpoint, bound before any BPF is loaded so a busy port fails fast.

Paths, in the style of Prometheus itself:
  /metrics    prometheus-client's own WSGI app; 503 with a one-line reason (and no series)
              until the session says it is ready; behind basic auth if configured
  /-/ready    200 "tcptrace-bpf is ready." once ready, 503 with the reason before
  /-/healthy  200 while the process serves
  anything else: 404. The probes are not behind basic auth (README: Readiness)."""

from __future__ import annotations

import base64
import hmac
import ipaddress
import socket
import ssl
import threading
from socketserver import ThreadingMixIn
from dataclasses import dataclass
from typing import Optional
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

DEFAULT_LISTEN = "127.0.0.1:9725"
METRICS, READY, HEALTHY = "/metrics", "/-/ready", "/-/healthy"
# a client that connects and then says nothing (no TLS hello, no request) holds only its own
# thread, and only this long
REQUEST_TIMEOUT = 30.0


class ListenError(Exception):
    """The endpoint cannot be served; the message says why."""


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    tls_cert: Optional[str] = None
    tls_key: Optional[str] = None
    auth_user: Optional[str] = None
    auth_password: Optional[str] = None


class Readiness:
    """Whether /metrics serves the exposition yet. Set by the session's thread, read by each
    request's (a single attribute: no lock needed)."""

    def __init__(self, waiting: Optional[str] = None):
        self.waiting = waiting  # one line: why not ready yet; None once ready

    @property
    def ready(self) -> bool:
        return self.waiting is None

    def set_ready(self) -> None:
        self.waiting = None


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


class _Quiet(WSGIRequestHandler):
    timeout = REQUEST_TIMEOUT

    def log_message(self, *args):  # scrapes are not news
        pass


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True

    def finish_request(self, request, client_address):
        # in the request's own thread: a TLS client that never completes its handshake must
        # not hold up accept() (and with it /-/healthy) for everyone else
        request.settimeout(REQUEST_TIMEOUT)
        if isinstance(request, ssl.SSLSocket):
            request.do_handshake()
        super().finish_request(request, client_address)

    def handle_error(self, request, client_address):
        pass  # a client that drops mid-request, or fails the TLS handshake


# one class per address family, never changed at run time: serve() may run more than once in
# a process (tests), on v4 and v6 at the same time
class _Server4(_Server):
    address_family = socket.AF_INET


class _Server6(_Server):
    address_family = socket.AF_INET6


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

    def app(environ, start_response):
        path, method = environ.get("PATH_INFO", ""), environ.get("REQUEST_METHOD", "GET")
        if path == METRICS:
            # header values arrive latin-1 decoded: compared as bytes, any byte is just wrong
            if want and not hmac.compare_digest(
                    environ.get("HTTP_AUTHORIZATION", "").encode("latin-1", "replace"), want):
                return _text(start_response, "401 Unauthorized", "unauthorized", environ,
                             [("WWW-Authenticate", 'Basic realm="tcptrace-bpf"')])
            waiting = readiness.waiting
            if waiting is not None:
                return _text(start_response, "503 Service Unavailable",
                             f"tcptrace-bpf: {waiting}", environ)
            return metrics(environ, start_response)
        if path not in (READY, HEALTHY):
            return _text(start_response, "404 Not Found",
                         f"not found; paths: {METRICS} {READY} {HEALTHY}", environ)
        if method not in ("GET", "HEAD"):
            return _text(start_response, "405 Method Not Allowed", "use GET or HEAD", environ,
                         [("Allow", "GET, HEAD")])
        if path == HEALTHY:
            return _text(start_response, "200 OK", "tcptrace-bpf is healthy.", environ)
        waiting = readiness.waiting
        if waiting is not None:
            return _text(start_response, "503 Service Unavailable", f"tcptrace-bpf: {waiting}",
                         environ)
        return _text(start_response, "200 OK", "tcptrace-bpf is ready.", environ)
    return app


def serve(ep: Endpoint, registry: CollectorRegistry,
          readiness: Optional[Readiness] = None) -> WSGIServer:
    """Bind and serve in a daemon thread. Without `readiness`, ready from the start."""
    app = make_app(registry, readiness or Readiness(), ep.auth_user, ep.auth_password)
    server_class = _Server6 if ":" in ep.host else _Server4
    try:
        server = make_server(ep.host, ep.port, app, server_class, handler_class=_Quiet)
    except OSError as exc:
        raise ListenError(f"cannot listen on {ep.host}:{ep.port}: {exc.strerror}") from None
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
