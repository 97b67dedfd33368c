"""The endpoint: listen errors as one line; routing of /metrics, /-/ready, /-/healthy before
and after ready; basic auth, TLS, v4 and v6 at once; replay --listen ready once loaded."""

import base64
import shutil
import signal
import socket
import ssl
import subprocess
import urllib.error
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, Counter

from tcptrace_bpf import endpoint
from tcptrace_bpf.endpoint import NOT_TRACING_YET, Exporter, ServeOptions
from tests.test_recording import RECORDINGS
from tests.background import TOOL, Background, free_port
from tests.conftest import require


def run_export(*args):
    return subprocess.run(TOOL + ["export", *args], capture_output=True, text=True, timeout=60)


def one_line_error(out, word):
    assert out.returncode == 1, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tcptrace-bpf: error: ") and word in lines[0], lines


def self_signed(tmp_path):
    """A throw-away certificate and key for 127.0.0.1 (PEM files)."""
    require(shutil.which("openssl") is not None, "needs openssl")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


def test_port_in_use_is_one_line():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    port = s.getsockname()[1]
    one_line_error(run_export("--listen", f"127.0.0.1:{port}"), "Address already in use")
    s.close()


@pytest.mark.parametrize("listen,word", [("nonsense", "HOST:PORT"), ("127.0.0.1:99999", "HOST:PORT"),
                                         ("example:80", "not an IP address")])
def test_bad_listen_address_is_one_line(listen, word):
    one_line_error(run_export("--listen", listen), word)


def test_unreadable_certificate_is_one_line(tmp_path):
    one_line_error(run_export("--listen", f"127.0.0.1:{free_port()}", "--tls-cert", str(tmp_path / "missing.pem")),
                   "cannot use TLS certificate")


def _registry():
    reg = CollectorRegistry()
    Counter("tcptrace_probe_total", "x", registry=reg).inc()
    return reg


def test_tls(tmp_path):
    cert, key = self_signed(tmp_path)
    server = endpoint.serve(endpoint.Endpoint("127.0.0.1", 0, str(cert), str(key)), _registry())
    try:
        ctx = ssl.create_default_context(cafile=str(cert))
        ctx.check_hostname = False
        body = urllib.request.urlopen(f"https://127.0.0.1:{server.server_port}/metrics",
                                      context=ctx, timeout=5).read()
        assert b"tcptrace_probe_total 1.0" in body
    finally:
        server.shutdown()


def get(url: str, headers=None, method="GET", **kw) -> tuple[int, str, dict]:
    """(status, body, headers) whatever the status."""
    req = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10, **kw) as r:
            return r.status, r.read().decode(), dict(r.headers)
    except urllib.error.HTTPError as err:
        with err:
            return err.code, err.read().decode(), dict(err.headers)


@pytest.fixture
def waiting():
    """A server not ready yet (as export is while it compiles), with its Readiness."""
    readiness = endpoint.Readiness("not tracing yet: compiling and attaching BPF programs")
    server = endpoint.serve(endpoint.Endpoint("127.0.0.1", 0), _registry(), readiness)
    yield f"http://127.0.0.1:{server.server_port}", readiness
    server.shutdown()
    server.server_close()


def test_metrics_is_503_with_one_line_and_no_series_until_ready(waiting):
    base, readiness = waiting
    status, body, headers = get(base + "/metrics")
    assert status == 503
    assert body == "tcptrace-bpf: not tracing yet: compiling and attaching BPF programs\n"
    assert headers["Content-Type"].startswith("text/plain")
    assert "tcptrace_" not in body
    readiness.set_ready()
    status, body, _ = get(base + "/metrics")
    assert status == 200 and "tcptrace_probe_total 1.0" in body


def test_ready_probe_follows_readiness_and_healthy_is_always_200(waiting):
    base, readiness = waiting
    assert get(base + "/-/ready")[:2] == (
        503, "tcptrace-bpf: not tracing yet: compiling and attaching BPF programs\n")
    assert get(base + "/-/healthy")[:2] == (200, "tcptrace-bpf is healthy.\n")
    readiness.set_ready()
    assert get(base + "/-/ready")[:2] == (200, "tcptrace-bpf is ready.\n")
    assert get(base + "/-/healthy")[:2] == (200, "tcptrace-bpf is healthy.\n")
    # HEAD, as probes may send: status only
    assert get(base + "/-/ready", method="HEAD")[:2] == (200, "")
    assert get(base + "/-/healthy", method="POST")[0] == 405


@pytest.mark.parametrize("path", ["/", "/metrics/", "/-/ready/", "/favicon.ico", "/-/reload",
                                  "/metric"])
def test_unknown_path_is_404(waiting, path):
    base, readiness = waiting
    readiness.set_ready()
    status, body, _ = get(base + path)
    assert status == 404 and "tcptrace_probe_total" not in body, body


def test_basic_auth_guards_metrics_but_not_the_probes():
    readiness = endpoint.Readiness("not tracing yet: x")
    server = endpoint.serve(endpoint.Endpoint("127.0.0.1", 0, auth_user="prom", auth_password="s3cret"),
                        _registry(), readiness)
    base = f"http://127.0.0.1:{server.server_port}"
    good = {"Authorization": "Basic " + base64.b64encode(b"prom:s3cret").decode()}
    bad = {"Authorization": "Basic " + base64.b64encode(b"prom:wrong").decode()}
    try:
        # before ready: credentials first (a stranger learns nothing from /metrics), then 503
        assert get(base + "/metrics")[0] == 401
        assert get(base + "/metrics", bad)[0] == 401
        assert get(base + "/metrics", good)[:2] == (503, "tcptrace-bpf: not tracing yet: x\n")
        assert get(base + "/-/ready")[0] == 503
        assert get(base + "/-/healthy")[0] == 200
        readiness.set_ready()
        status, body, headers = get(base + "/metrics")
        assert status == 401 and "tcptrace_probe_total" not in body
        assert headers["WWW-Authenticate"] == 'Basic realm="tcptrace-bpf"'
        # a header that is not even ASCII is just wrong, not a server error
        assert get(base + "/metrics", {"Authorization": "Basic \xe9t\xe9"})[0] == 401
        status, body, _ = get(base + "/metrics", good)
        assert status == 200 and "tcptrace_probe_total 1.0" in body
        assert get(base + "/-/ready")[0] == 200 and get(base + "/-/healthy")[0] == 200
    finally:
        server.shutdown()
        server.server_close()


def test_v4_and_v6_endpoints_in_one_process():
    require(socket.has_ipv6 and any(l.split()[-1] == "lo" for l in
                                    open("/proc/net/if_inet6").read().splitlines()),
            "needs IPv6 on loopback")
    six = endpoint.serve(endpoint.Endpoint("::1", 0), _registry())
    four = endpoint.serve(endpoint.Endpoint("127.0.0.1", 0), _registry())
    try:
        assert six.socket.family == socket.AF_INET6 and four.socket.family == socket.AF_INET
        assert get(f"http://[::1]:{six.server_port}/metrics")[0] == 200
        assert get(f"http://127.0.0.1:{four.server_port}/metrics")[0] == 200
        # serve() set no class attribute that a later call would inherit
        assert "address_family" not in vars(endpoint._Server)
    finally:
        for s in (six, four):
            s.shutdown()
            s.server_close()


def test_a_silent_tls_client_does_not_block_the_probes(tmp_path):
    cert, key = self_signed(tmp_path)
    readiness = endpoint.Readiness("not tracing yet: x")
    server = endpoint.serve(endpoint.Endpoint("127.0.0.1", 0, str(cert), str(key)), _registry(), readiness)
    silent = socket.create_connection(("127.0.0.1", server.server_port))  # never says hello
    try:
        ctx = ssl.create_default_context(cafile=str(cert))
        ctx.check_hostname = False
        base = f"https://127.0.0.1:{server.server_port}"
        assert get(base + "/-/healthy", context=ctx)[0] == 200
        assert get(base + "/metrics", context=ctx)[0] == 503
        readiness.set_ready()
        assert get(base + "/-/ready", context=ctx)[0] == 200
        assert "tcptrace_probe_total 1.0" in get(base + "/metrics", context=ctx)[1]
    finally:
        silent.close()
        server.shutdown()
        server.server_close()


def test_exporter_is_not_ready_until_told():
    exp = Exporter(ServeOptions(listen=f"127.0.0.1:{free_port()}"))
    base = f"http://127.0.0.1:{exp.server.server_port}"
    try:
        status, body, _ = get(base + "/metrics")
        assert (status, body) == (503, f"tcptrace-bpf: {NOT_TRACING_YET}\n")
        assert get(base + "/-/ready")[0] == 503
        exp.ready()
        status, body, _ = get(base + "/metrics")
        assert status == 200
        assert 'tcptrace_handshakes_total{family="4",outcome="refused",path="active"} 0.0' in body
        assert get(base + "/-/ready")[0] == 200
    finally:
        exp.close()


def test_replay_listen_is_ready_once_the_recording_is_loaded():
    port = free_port()
    rec = RECORDINGS / "wire1-normal4.rec"
    proc = Background(TOOL + ["replay", str(rec), "--listen", f"127.0.0.1:{port}"], "serving http")
    try:
        proc.wait_started(60)
        base = f"http://127.0.0.1:{port}"
        assert get(base + "/-/ready")[:2] == (200, "tcptrace-bpf is ready.\n")
        status, body, _ = get(base + "/metrics")
        assert status == 200
        for path in ("active", "passive"):
            assert (f'tcptrace_handshakes_total{{family="4",outcome="established",path="{path}"}} 1.0'
                    in body), body
    finally:
        assert proc.stop(signal.SIGTERM) == 0


def test_no_created_series_and_no_global_switch_at_import():
    """The exposition has no *_created series, and importing the endpoint turns nothing off
    for anyone else in the process (prometheus-client's own Counter keeps its _created)."""
    probe = """
from prometheus_client import CollectorRegistry, Counter, generate_latest
from tcptrace_bpf.endpoint import Exporter, ServeOptions
from tests.background import free_port
exp = Exporter(ServeOptions(listen=f"127.0.0.1:{free_port()}"))
exp.add_self_metrics("tracepoint", dict, int)
ours = generate_latest(exp.registry).decode()
exp.close()
assert "_created" not in ours and "tcptrace_handshakes_total" in ours, ours
reg = CollectorRegistry()
Counter("other", "x", registry=reg)
assert b"other_created" in generate_latest(reg)
"""
    out = subprocess.run([TOOL[0], "-c", probe], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
