"""The /metrics endpoint: listen errors as one line, basic auth, TLS."""

import base64
import shutil
import socket
import ssl
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, Counter

from tcptrace_bpf import http
from tests.conftest import require

TOOL = [sys.executable, "-m", "tcptrace_bpf.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_export(*args):
    return subprocess.run(TOOL + ["export", *args], capture_output=True, text=True, timeout=60)


def one_line_error(out, word):
    assert out.returncode == 1, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tcptrace-bpf: error: ") and word in lines[0], lines


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


def test_basic_auth_required_when_configured():
    server = http.serve(http.Endpoint("127.0.0.1", 0, auth_user="prom", auth_password="s3cret"), _registry())
    url = f"http://127.0.0.1:{server.server_port}/metrics"
    try:
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(url, timeout=5)
        assert err.value.code == 401
        req = urllib.request.Request(url, headers={
            "Authorization": "Basic " + base64.b64encode(b"prom:s3cret").decode()})
        assert b"tcptrace_probe_total 1.0" in urllib.request.urlopen(req, timeout=5).read()
    finally:
        server.shutdown()


def test_tls(tmp_path):
    require(shutil.which("openssl") is not None, "needs openssl")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    server = http.serve(http.Endpoint("127.0.0.1", 0, str(cert), str(key)), _registry())
    try:
        ctx = ssl.create_default_context(cafile=str(cert))
        ctx.check_hostname = False
        body = urllib.request.urlopen(f"https://127.0.0.1:{server.server_port}/metrics",
                                      context=ctx, timeout=5).read()
        assert b"tcptrace_probe_total 1.0" in body
    finally:
        server.shutdown()
