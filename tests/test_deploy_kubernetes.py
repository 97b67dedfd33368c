"""deploy/kubernetes: the manifests are valid Kubernetes objects, agree with each other, and
agree with the tool they run.

Schema validation is kubernetes-validate --strict (unknown fields rejected) against the
schemas it bundles for the Kubernetes versions below. It has no schema for a custom resource:
for the PodMonitor (a Prometheus Operator CRD) it only warns, so that file gets a structural
test of the fields we rely on instead (test_podmonitor_structure), which is not a schema
validation. The schemas check field names and types, not values (a hostPath type or a
capability name can be any string): the tests below check the values that matter."""

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main
import yaml

from tcptrace_bpf import __version__, cli, endpoint, loader, privileges
from tests.conftest import require

DIR = Path(__file__).resolve().parent.parent / "deploy" / "kubernetes"
KUBE_VERSIONS = ("1.31", "1.37")  # each must be bundled by the kubernetes-validate in use
NATIVE = {  # file -> resources a built-in schema must pass
    "namespace.yaml": ["namespace/tcptrace"],
    "daemonset.yaml": ["daemonset/tcptrace-bpf"],
    "service.yaml": ["service/tcptrace-bpf"],
}
CUSTOM = {"podmonitor.yaml": "PodMonitor"}  # kinds kubernetes-validate has no schema for
NAMESPACE = "tcptrace"
# what apt, dpkg and tar need as root in a container (measured: apt-get install under podman
# with exactly these, no-new-privileges)
APT_CAPS = {"CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "SETGID", "SETUID"}
HOST_PATH_TYPES = {"", "DirectoryOrCreate", "Directory", "FileOrCreate", "File", "Socket",
                   "CharDevice", "BlockDevice"}


def docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((DIR / name).read_text()) if d]


def one(name: str) -> dict:
    found = docs(name)
    assert len(found) == 1, f"{name}: expected one object, found {len(found)}"
    return found[0]


@pytest.fixture(scope="module")
def ds() -> dict:
    d = one("daemonset.yaml")
    assert (d["apiVersion"], d["kind"]) == ("apps/v1", "DaemonSet")
    return d


@pytest.fixture(scope="module")
def pod(ds) -> dict:
    return ds["spec"]["template"]["spec"]


@pytest.fixture(scope="module")
def container(pod) -> dict:
    (c,) = pod["containers"]
    return c


@pytest.fixture(scope="module")
def init(pod) -> dict:
    (c,) = pod["initContainers"]
    assert c["name"] == "kernel-headers"
    return c


def metrics_port(container) -> dict:
    (p,) = [p for p in container["ports"] if p["name"] == "metrics"]
    return p


def validate(*args: str, cwd: Path = DIR) -> subprocess.CompletedProcess:
    require(importlib.util.find_spec("kubernetes_validate") is not None,
            "kubernetes-validate is not installed (pip install -e '.[test]')")
    versions = [a for v in KUBE_VERSIONS for a in ("-k", v)]
    return subprocess.run([sys.executable, "-m", "kubernetes_validate", *versions, *args],
                          cwd=cwd, capture_output=True, text=True, timeout=120)


# --- schema validation ---------------------------------------------------------------------

def test_manifests_pass_strict_schema_validation():
    files = [*NATIVE, *CUSTOM]
    run = validate("--strict", *files)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out
    for name, resources in NATIVE.items():
        for resource in resources:
            for v in KUBE_VERSIONS:
                # an unknown apiVersion or kind is only a WARN with exit 0: demand the pass
                assert f"INFO {name} passed for resource {resource} against version {v}" in out, out
    for line in out.splitlines():
        if line.startswith("INFO") and " passed " in line:
            continue
        # the only other line allowed: no schema for the custom resource (a schema for it in
        # a later kubernetes-validate would turn this into a pass, and is welcome)
        kind = next((k for n, k in CUSTOM.items() if line.startswith(f"WARN {n} ")), None)
        assert kind and f"Couldn't find schema for kind {kind} " in line, line


def test_strict_validation_rejects_an_unknown_field(tmp_path):
    """The validator really checks: a misspelt field (the kind of typo a review misses) fails
    under --strict, and only under --strict."""
    text = (DIR / "daemonset.yaml").read_text()
    assert text.count("readinessProbe:") == 1
    (tmp_path / "broken.yaml").write_text(text.replace("readinessProbe:", "readinesProbe:"))
    strict = validate("--strict", "broken.yaml", cwd=tmp_path)
    assert strict.returncode != 0, strict.stdout
    assert "ERROR broken.yaml did not validate" in strict.stdout
    assert "'readinesProbe' was unexpected" in strict.stdout
    lax = validate("broken.yaml", cwd=tmp_path)
    assert lax.returncode == 0, lax.stdout


def test_strict_validation_rejects_a_wrong_type(tmp_path):
    text = (DIR / "daemonset.yaml").read_text()
    assert text.count("containerPort: 9725") == 1
    broken = text.replace("containerPort: 9725", "containerPort: metrics")
    (tmp_path / "broken.yaml").write_text(broken)
    run = validate("--strict", "broken.yaml", cwd=tmp_path)
    assert run.returncode != 0, run.stdout
    assert "containerPort: 'metrics' is not of type 'integer'" in run.stdout


# --- PodMonitor: structural, not a schema validation -----------------------------------------

def test_podmonitor_structure(pod, container, ds):
    """The fields of the PodMonitor we rely on, by name (a typo in a custom resource's field is
    otherwise silently ignored or rejected only by the cluster)."""
    pm = one("podmonitor.yaml")
    assert (pm["apiVersion"], pm["kind"]) == ("monitoring.coreos.com/v1", "PodMonitor")
    assert pm["metadata"]["namespace"] == ds["metadata"]["namespace"]
    assert set(pm["spec"]) == {"selector", "podMetricsEndpoints"}
    assert set(pm["spec"]["selector"]) == {"matchLabels"}
    wanted = pm["spec"]["selector"]["matchLabels"]
    assert wanted and wanted.items() <= ds["spec"]["template"]["metadata"]["labels"].items()
    (ep,) = pm["spec"]["podMetricsEndpoints"]
    assert set(ep) <= {"port", "path", "scheme", "interval", "relabelings"}
    assert ep["port"] == metrics_port(container)["name"]
    assert ep["path"] == endpoint.METRICS
    assert ep["scheme"] == "http"
    assert re.fullmatch(r"(\d+(ms|s|m|h))+", ep["interval"]) and ep["interval"] == "15s"
    for r in ep.get("relabelings", []):
        assert set(r) <= {"sourceLabels", "targetLabel", "action", "regex", "replacement"}, r
        assert all(s.startswith("__meta_kubernetes_pod_") for s in r.get("sourceLabels", []))
    # instance = node name, as the pod-discovery scrape config sets it
    targets = {r["targetLabel"]: r["sourceLabels"] for r in ep["relabelings"]}
    assert targets["instance"] == ["__meta_kubernetes_pod_node_name"]


# --- consistency between the files and with the tool ----------------------------------------

def test_selectors_match_the_pods(ds):
    labels = ds["spec"]["template"]["metadata"]["labels"]
    selector = ds["spec"]["selector"]["matchLabels"]
    assert set(ds["spec"]["selector"]) == {"matchLabels"}
    assert selector and selector.items() <= labels.items()
    # a DaemonSet's selector cannot change after creation: nothing that changes per release
    assert "app.kubernetes.io/version" not in selector
    svc = one("service.yaml")
    assert svc["spec"]["selector"] == selector
    pm = one("podmonitor.yaml")
    assert pm["spec"]["selector"]["matchLabels"] == selector


def test_every_object_is_in_the_namespace():
    ns = one("namespace.yaml")
    assert (ns["kind"], ns["metadata"]["name"]) == ("Namespace", NAMESPACE)
    # baseline forbids hostPath volumes and the BPF/PERFMON capabilities
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"
    for name in [*NATIVE, *CUSTOM]:
        for d in docs(name):
            if d["kind"] != "Namespace":
                assert d["metadata"]["namespace"] == NAMESPACE, name
            assert d["metadata"]["labels"]["app.kubernetes.io/name"] == "tcptrace-bpf", name


def test_service_is_headless_on_the_metrics_port(container):
    svc = one("service.yaml")
    assert (svc["apiVersion"], svc["kind"]) == ("v1", "Service")
    assert svc["spec"]["clusterIP"] == "None"
    (p,) = svc["spec"]["ports"]
    port = metrics_port(container)
    assert (p["name"], p["port"]) == ("metrics", port["containerPort"])
    assert p["targetPort"] == port["name"]


def test_args_parse_and_listen_matches_the_port(container):
    """The args are a valid `tcptrace-bpf export` command line (parsed by the real CLI, not run),
    listening on every address of the pod at the container port."""
    args = container["args"]
    assert "command" not in container  # the image's entry point is the program
    assert args[0] == "export"
    command = typer.main.get_command(cli.app).commands["export"]
    params = command.make_context("export", list(args[1:])).params
    host, _, port = params["listen"].rpartition(":")
    assert host == "0.0.0.0"  # the kubelet's probes and Prometheus come to the pod's address
    assert int(port) == metrics_port(container)["containerPort"] == 9725
    assert metrics_port(container)["protocol"] == "TCP"


def test_probes(container):
    ready, live = container["readinessProbe"], container["livenessProbe"]
    assert ready["httpGet"] == {"path": endpoint.READY, "port": "metrics"}
    assert live["httpGet"] == {"path": endpoint.HEALTHY, "port": "metrics"}
    assert (endpoint.READY, endpoint.HEALTHY) == ("/-/ready", "/-/healthy")
    assert ready["periodSeconds"] == 2
    # /-/healthy answers while bcc compiles: liveness must not need a startup probe's grace
    assert "startupProbe" not in container
    assert live.get("failureThreshold", 3) * live.get("periodSeconds", 10) >= 20


def test_least_privilege(pod, container):
    sc = container["securityContext"]
    assert sc["capabilities"]["drop"] == ["ALL"]
    add = sc["capabilities"]["add"]
    # exactly what the tool asks for (privileges.required(): CAP_BPF + CAP_PERFMON on 5.8+)
    assert sorted(f"CAP_{c}" for c in add) == sorted(privileges.required()), add
    # uid 0: Kubernetes gives a non-root uid no ambient capabilities, and as another user the
    # tool would also need CAP_DAC_READ_SEARCH for tracefs (deploy/systemd measures that)
    assert sc["runAsUser"] == 0
    assert sc["privileged"] is False
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["hostNetwork"] is False
    # the /proc walk hostPID is for cannot read other processes without CAP_SYS_PTRACE
    assert not pod.get("hostPID") or "SYS_PTRACE" in add
    assert not pod.get("hostIPC")
    assert pod["automountServiceAccountToken"] is False
    # nothing at pod level loosens the container's settings
    assert not {"seccompProfile", "sysctls", "runAsNonRoot"} & set(pod.get("securityContext", {}))


def test_mounts(pod, container, init):
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    init_mounts = {m["name"]: m for m in init["volumeMounts"]}
    assert len(volumes) == len(pod["volumes"]) and len(mounts) == len(container["volumeMounts"])
    assert set(mounts) == set(volumes), "every mount needs its volume and every volume a mount"
    assert set(init_mounts) <= set(volumes)
    host = {n: v["hostPath"] for n, v in volumes.items() if "hostPath" in v}
    assert {h["path"] for h in host.values()} == {
        "/sys/kernel/btf", "/sys/kernel/tracing", "/sys/kernel/debug",
        "/lib/modules", "/usr/src", "/var/cache/tcptrace-bpf"}
    cache = next(n for n, h in host.items() if h["path"] == "/var/cache/tcptrace-bpf")
    for name, h in host.items():
        # bcc and the loader look at the host's paths: each appears where it is on the host
        for m in (mounts, init_mounts):
            assert name not in m or m[name]["mountPath"] == h["path"], name
        assert h.get("type", "") in HOST_PATH_TYPES, h  # the schema takes any string
        # the tracer writes to no host path; the headers cache is written by the init step only
        assert mounts[name].get("readOnly") is True, name
        assert name not in init_mounts or init_mounts[name].get("readOnly", False) is (name != cache)
    assert host[cache]["type"] == "DirectoryOrCreate"
    assert cache in init_mounts
    # the headers tree the loader looks for is inside the cache mount, for both containers
    for c, m in ((container, mounts), (init, init_mounts)):
        env = {e["name"]: e["value"] for e in c["env"]}
        assert Path(env["TCPTRACE_HEADERS_ROOT"]).is_relative_to(m[cache]["mountPath"])
    assert loader.HEADERS_CACHE.is_relative_to(mounts[cache]["mountPath"])
    # a read-only root file system gets a writable /tmp
    tmp = next(n for n, m in mounts.items() if m["mountPath"] == "/tmp")
    assert "emptyDir" in volumes[tmp] and not mounts[tmp].get("readOnly")


def test_init_container_builds_headers_without_tracing_privileges(container, init):
    """kernel-headers runs the image's one-shot `headers` step: ordinary file-owner
    capabilities for apt and dpkg, none of the tracing ones."""
    assert init["image"] == container["image"]
    assert init["args"] == ["headers"] and "command" not in init
    sc = init["securityContext"]
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert set(sc["capabilities"]["add"]) <= APT_CAPS, sc["capabilities"]["add"]
    assert sc["runAsUser"] == 0
    assert sc["privileged"] is False
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert "limits" in init["resources"] and "memory" in init["resources"]["limits"]


def mebibytes(quantity: str) -> float:
    units = {"Mi": 1, "Gi": 1024, "M": 1e6 / 2**20, "G": 1e9 / 2**20}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return float(quantity[: -len(suffix)]) * factor
    return float(quantity) / 2**20


def test_scheduling_and_resources(ds, pod, container):
    assert pod["tolerations"] == [{"operator": "Exists"}]  # every node, tainted ones too
    assert ds["spec"]["updateStrategy"]["type"] == "RollingUpdate"
    assert 0 < pod["terminationGracePeriodSeconds"] <= 30
    assert pod.get("priorityClassName") not in ("system-node-critical", "system-cluster-critical")
    res = container["resources"]
    assert {"cpu", "memory"} <= set(res["requests"])
    assert set(res["limits"]) == {"memory"}  # no CPU limit: the start-up compile needs a core
    # measured in the image under podman (README "Fleet"): steady 44 MiB RSS + 20 MiB of BPF
    # maps, start peak 249 MiB (the short-lived loading process compiles). A request below the
    # steady use lets the scheduler overcommit the node; one sized for the start peak reserves
    # LLVM's memory on every node for the exporter's whole life; a limit near the peak gets the
    # exporter OOM-killed at start
    assert 64 <= mebibytes(res["requests"]["memory"]) <= 128
    assert mebibytes(res["limits"]["memory"]) >= 1.5 * 249


def test_image_and_version_label_follow_the_release(ds, container):
    assert container["image"] == f"tcptrace-bpf:{__version__}"
    assert container["imagePullPolicy"] == "IfNotPresent"
    assert ds["metadata"]["labels"]["app.kubernetes.io/version"] == __version__
    assert ds["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/version"] == __version__


def test_kustomization_lists_the_manifests():
    k = one("kustomization.yaml")
    assert (k["apiVersion"], k["kind"]) == ("kustomize.config.k8s.io/v1beta1", "Kustomization")
    listed = k["resources"]
    assert len(set(listed)) == len(listed)
    assert all((DIR / f).is_file() for f in listed), listed
    present = {p.name for p in DIR.glob("*.yaml")} - {"kustomization.yaml"}
    # everything but the custom resource, which needs the Prometheus Operator's CRDs
    assert set(listed) == present - set(CUSTOM) == set(NATIVE)
