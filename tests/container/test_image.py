"""The exporter from the image, run by deploy/container/podman-run.sh exactly as the README
says (CAP_BPF + CAP_PERFMON only, its seccomp profile and mounts), scraped by a real Prometheus
with deploy/prometheus's static config and fleet rules while real handshakes run; and the
image's two ways to kernel headers (a host cache it builds itself, the distro's own tree)."""

import json
import os
import platform
import shutil
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml

from tcptrace_bpf import privileges
from tests.background import ROOT, free_port
from tests.conftest import require
from tests.kernel.harness import run_scenario
from tests.kernel.scenarios import REFUSED_MANY
from tests.prometheus_server import PrometheusServer

IMAGE = os.environ.get("TCPTRACE_IMAGE", "")
RUN = ROOT / "deploy" / "container" / "podman-run.sh"
PROMETHEUS = ROOT / "deploy" / "prometheus"
HEADERS = Path(os.environ.get("TCPTRACE_HEADERS_ROOT", "/var/cache/tcptrace-bpf/kernel-headers"))


def run_image(*podman_opts: str, tool_args: tuple = (), env: dict | None = None,
              timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(RUN), *podman_opts, "--", *tool_args], capture_output=True,
                          text=True, timeout=timeout, env=dict(os.environ, **(env or {})))


def podman_run() -> list[str]:
    """`podman run --rm` with this host's own options (scripts/image-test.sh), for the runs
    that deliberately differ from podman-run.sh."""
    return ["podman", *os.environ.get("PODMAN_GLOBAL_OPTS", "").split(), "run", "--rm",
            *os.environ.get("PODMAN_RUN_OPTS", "").split()]


def ready_code(port: int) -> int:
    """/-/ready's status, or 0 while nothing answers the published port yet."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


@pytest.fixture(scope="module")
def container():
    require(shutil.which("podman") is not None, "needs podman (make image-test installs it)")
    name = f"tcptrace-image-test-{uuid.uuid4().hex[:8]}"
    port = free_port()
    out = run_image("-d", "--rm", "--name", name, "-p", f"127.0.0.1:{port}:9725")
    assert out.returncode == 0, out.stderr
    codes = []
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and (not codes or codes[-1] != 200):
        codes.append(ready_code(port))
        time.sleep(0.1)
    yield name, port, codes
    subprocess.run(["podman", "stop", "-t", "10", name], capture_output=True, timeout=60)


def test_ready_goes_from_503_to_200(container):
    name, _, codes = container
    answered = [c for c in codes if c]
    logs = subprocess.run(["podman", "logs", name], capture_output=True, text=True).stderr
    assert answered and answered[-1] == 200, f"never ready: {codes[-5:]}\n{logs}"
    # bound before compiling: the probe sees 503 while bcc works, then 200, nothing else
    assert answered[0] == 503 and set(answered) == {503, 200}, answered
    assert "backend tracepoint" in logs


def test_capabilities_are_only_bpf_and_perfmon(container):
    name = container[0]
    status = subprocess.run(["podman", "exec", name, "cat", "/proc/1/status"],
                            capture_output=True, text=True, check=True).stdout
    caps = {k: int(v, 16) for k, v in (line.split(":\t") for line in status.splitlines()
                                       if line.startswith("Cap"))}
    want = privileges.mask(privileges.required())
    assert caps["CapEff"] == caps["CapBnd"] == want, caps


@pytest.fixture(scope="module")
def prometheus(container, tmp_path_factory):
    """Prometheus with the shipped static config (targets and intervals set for the test)."""
    _, port, _ = container
    tmp = tmp_path_factory.mktemp("prom")
    config = yaml.safe_load((PROMETHEUS / "scrape-static.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "tcptrace")
    job["static_configs"] = [{"targets": [f"127.0.0.1:{port}"]}]
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    for rules in config["rule_files"]:
        shutil.copy(PROMETHEUS / rules, tmp / rules)
    prom = PrometheusServer(tmp)
    try:
        prom.wait_scrapes("tcptrace")
        yield prom
    finally:
        prom.stop()


def latest(prom: PrometheusServer, expr: str) -> float:
    got = prom.query(expr)
    return sum(float(r["value"][1]) for r in got)


def settle(prom: PrometheusServer) -> None:
    """Two scrapes after now: the newest sample includes everything done before."""
    before = latest(prom, 'count_over_time(up{job="tcptrace"}[5m])')
    deadline = time.monotonic() + 30
    while latest(prom, 'count_over_time(up{job="tcptrace"}[5m])') < before + 2:
        assert time.monotonic() < deadline, "scrapes stopped"
        time.sleep(0.2)


def test_handshakes_move_the_scraped_series(prometheus):
    refused = 'sum(tcptrace_handshakes_total{job="tcptrace",path="active",outcome="refused"})'
    established = 'sum(tcptrace_handshakes_total{job="tcptrace",path="passive",outcome="established"})'
    settle(prometheus)
    r0, e0 = latest(prometheus, refused), latest(prometheus, established)
    run_scenario("refused_many")
    run_scenario("normal4")
    run_scenario("normal6")
    settle(prometheus)
    # exact for refusals (the scenario's own count, the kernel's RSTs); at least for
    # established opens (Prometheus's own scrapes through the published port are opens too)
    assert latest(prometheus, refused) - r0 == REFUSED_MANY
    assert latest(prometheus, established) - e0 >= 2


def test_fleet_rules_record_from_the_live_scrape(prometheus):
    deadline = time.monotonic() + 30
    while not prometheus.query('job:tcptrace_handshakes:rate5m{outcome="refused"} > 0'):
        assert time.monotonic() < deadline, "fleet rule never recorded the refusals"
        time.sleep(0.5)
    assert prometheus.query('job:tcptrace_build_info:count{backend="tracepoint"} == 1')


def stock_profile_grants_bpf_by_capability() -> bool:
    with open("/usr/share/containers/seccomp.json") as f:
        rules = json.load(f)["syscalls"]
    return any("bpf" in r["names"] and r["action"] == "SCMP_ACT_ALLOW"
               and "CAP_BPF" in r.get("includes", {}).get("caps", []) for r in rules)


def test_stock_seccomp_profile_and_the_two_capabilities():
    """Why podman-run.sh brings a profile: Debian's containers-common (bookworm) allows bpf()
    only with CAP_SYS_ADMIN, so the two capabilities alone fail there; a runtime whose profile
    grants it by CAP_BPF needs no profile of ours, and then this run must trace."""
    require(shutil.which("podman") is not None, "needs podman")
    out = subprocess.run([*podman_run(), "--cap-drop", "all", "--cap-add", "CAP_BPF,CAP_PERFMON",
                          "-v", "/sys/kernel/debug:/sys/kernel/debug:ro",
                          "-v", f"{HEADERS}:/var/cache/tcptrace-bpf/kernel-headers:ro",
                          IMAGE, "check"], capture_output=True, text=True, timeout=180)
    if stock_profile_grants_bpf_by_capability():
        assert out.returncode == 0, out.stdout + out.stderr
    else:
        assert out.returncode == 1
        assert ("ring buffer: could not open bpf map: rb, error: Operation not permitted"
                in out.stdout), out.stdout


def test_headers_from_the_host_distro_tree(tmp_path):
    """A host with /lib/modules/$(uname -r)/build: the image uses it, no cache needed (the
    cache mount is empty here; the host's tree stands in for a distro's headers)."""
    tree = HEADERS / platform.release()
    require((tree / ".ready").exists(), f"needs the headers tree {tree} (make setup)")
    out = run_image("--rm", "-v", f"{tree}:/lib/modules/{platform.release()}/build:ro",
                    tool_args=("check",), env={"TCPTRACE_HEADERS_ROOT": str(tmp_path)})
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"OK    kernel headers: /lib/modules/{platform.release()}/build" in out.stdout


def test_headers_step_accepts_a_debian_split_tree(tmp_path):
    """Debian's linux-headers put only include/{config,generated} under build/ (the rest is in
    the -common package beside it): `headers` must see the distro's tree and do nothing."""
    build = tmp_path / "build"
    (build / "include" / "generated").mkdir(parents=True)
    (tmp_path / "cache").mkdir()
    out = subprocess.run([*podman_run(), "-v", f"{build}:/lib/modules/{platform.release()}/build:ro",
                          "-v", f"{tmp_path / 'cache'}:/var/cache/tcptrace-bpf/kernel-headers",
                          IMAGE, "headers"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert f"using /lib/modules/{platform.release()}/build" in out.stderr
    assert not any((tmp_path / "cache").iterdir())


def test_image_builds_a_missing_headers_tree(tmp_path):
    """A host with no headers at all: `headers` (default capabilities, network) builds the
    tree into the host cache once; the exporter's least-privilege run then compiles with it."""
    require(shutil.which("podman") is not None, "needs podman")
    before = run_image("--rm", tool_args=("check",), env={"TCPTRACE_HEADERS_ROOT": str(tmp_path)})
    assert before.returncode == 1 and "no kernel headers" in before.stdout, before.stdout
    build = subprocess.run([*podman_run(), "-v", f"{tmp_path}:/var/cache/tcptrace-bpf/kernel-headers",
                            IMAGE, "headers"], capture_output=True, text=True, timeout=900)
    assert build.returncode == 0, build.stderr[-2000:]
    assert (tmp_path / platform.release() / ".ready").exists()
    after = run_image("--rm", tool_args=("check",), env={"TCPTRACE_HEADERS_ROOT": str(tmp_path)})
    assert after.returncode == 0, after.stdout + after.stderr
    assert "tracing can work: yes" in after.stdout
