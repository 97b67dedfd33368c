"""The Prometheus endpoint as `export` and `replay --listen` share it: validated options,
a bound socket (before any BPF loads, so a busy port fails fast) and the metrics sink.
/metrics answers 503 with a one-line reason until the caller says ready() (export: once its
probes are attached; replay: once the recording is loaded); /-/ready says which."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from prometheus_client import CollectorRegistry

from . import __version__, http
from .buckets import buckets_from_sysctls
from .sinks.prometheus import HandshakeMetrics, SelfMetrics


@dataclass(frozen=True)
class ServeOptions:
    listen: str = http.DEFAULT_LISTEN
    tls_cert: Optional[Path] = None
    tls_key: Optional[Path] = None
    basic_auth_user: Optional[str] = None
    basic_auth_password_file: Optional[Path] = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls_cert else 'http'}://{self.listen}/metrics"


# the one-line reasons /metrics and /-/ready give before ready(), after "tcptrace-bpf: "
NOT_TRACING_YET = "not tracing yet: compiling and attaching BPF programs"
NOT_REPLAYED_YET = "not ready yet: replaying the recording"


class Exporter:
    """Raises http.ListenError (one line) for anything wrong with the options or the port.
    Serves 503 ("tcptrace-bpf: " + `waiting`) on /metrics and /-/ready until ready()."""

    def __init__(self, opts: ServeOptions, waiting: str = NOT_TRACING_YET):
        host, port = http.parse_listen(opts.listen)
        password = None
        if opts.basic_auth_user:
            if not opts.basic_auth_password_file:
                raise http.ListenError("--basic-auth-user needs --basic-auth-password-file")
            try:
                password = opts.basic_auth_password_file.read_text().strip()
            except OSError as exc:
                raise http.ListenError(f"cannot read {opts.basic_auth_password_file}: "
                                       f"{exc.strerror}") from None
        if opts.tls_key and not opts.tls_cert:
            raise http.ListenError("--tls-key needs --tls-cert")
        self.registry = CollectorRegistry()
        self.buckets = buckets_from_sysctls()
        self.metrics = HandshakeMetrics(self.buckets)
        self.registry.register(self.metrics)
        self.readiness = http.Readiness(waiting)
        self.server = http.serve(http.Endpoint(
            host, port, str(opts.tls_cert) if opts.tls_cert else None,
            str(opts.tls_key) if opts.tls_key else None, opts.basic_auth_user, password),
            self.registry, self.readiness)

    def ready(self) -> None:
        """From now on /metrics serves the exposition and /-/ready answers 200. Call it once
        every collector is registered (a scrape never sees a partial exposition)."""
        self.readiness.set_ready()

    def count_in_kernel(self, aggregates: Callable[[], dict]) -> None:
        """Export mode: add the kernel's counters (loader.Tracer.aggregates) at each scrape."""
        self.metrics.kernel = aggregates

    def add_self_metrics(self, backend: str, lost: Callable[[], dict],
                         tracked: Callable[[], int]) -> None:
        self.registry.register(SelfMetrics(__version__, backend, lost, tracked))

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
