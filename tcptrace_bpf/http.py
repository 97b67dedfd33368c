"""The /metrics endpoint: prometheus-client's WSGI app behind optional basic auth and TLS,
bound before any BPF is loaded so a busy port fails fast."""

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
    def log_message(self, *args):  # scrapes are not news
        pass


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # a client that drops mid-request, or fails the TLS handshake


def _with_basic_auth(app, user: str, password: str):
    want = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    def guarded(environ, start_response):
        if hmac.compare_digest(environ.get("HTTP_AUTHORIZATION", ""), want):
            return app(environ, start_response)
        start_response("401 Unauthorized", [("WWW-Authenticate", 'Basic realm="tcptrace-bpf"'),
                                            ("Content-Type", "text/plain")])
        return [b"unauthorized\n"]
    return guarded


def serve(ep: Endpoint, registry: CollectorRegistry) -> WSGIServer:
    app = make_wsgi_app(registry)
    if ep.auth_user:
        app = _with_basic_auth(app, ep.auth_user, ep.auth_password or "")
    _Server.address_family = socket.AF_INET6 if ":" in ep.host else socket.AF_INET
    try:
        server = make_server(ep.host, ep.port, app, _Server, handler_class=_Quiet)
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
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True, name="metrics").start()
    return server
