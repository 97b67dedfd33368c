"""deploy/systemd/tcptrace-bpf.service: `systemd-analyze verify` and `security` on the real unit
text, and its ExecStart= run to readiness under the unit's own user, capabilities, mounts and
system call filters, emulated (unit_sandbox.py: systemd is not PID 1 on the test machines)."""

import ctypes
import ctypes.util
import json
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tcptrace_bpf import privileges
from tcptrace_bpf.buckets import buckets_from_sysctls
from tests.background import ROOT, free_port
from tests.conftest import require

from .conftest import START_TIMEOUT, kernel_ready
from .test_readiness import get, poll_until_ready, sample
from .unit_sandbox import (INSTALLED_TOOL, UNIT, boolean, emulated, last, mount_table, plan,
                           sandboxed, service, under, words)

# `systemd-analyze security --offline` of the unit as committed; lower is better. Raise it only
# with a reason: a rise means a protection went.
MEASURED_EXPOSURE = 1.8
# The protections that `security` finds missing, each on purpose (its --json field: why).
ACCEPTED_EXPOSURES = {
    "CapabilityBoundingSet_CAP_BPF": "loading BPF programs is what the tool does",
    "SystemCallFilter_privileged": "bpf() is in @privileged",
    "SystemCallFilter_debug": "perf_event_open(), to attach to tracepoints, is in @debug",
    "AmbientCapabilities": "how a user other than root gets its capabilities",
    "CapabilityBoundingSet_CAP_DAC_FOWNER_IPC_OWNER": "CAP_DAC_READ_SEARCH: tracefs is root's",
    "ProtectKernelModules": "it would hide /lib/modules/*/build, the distribution's headers",
    "RootDirectoryOrRootImage": "bcc, Python and the kernel headers are the host's",
    "RestrictAddressFamilies_AF_INET_INET6": "the HTTP endpoint",
    "PrivateNetwork": "Prometheus has to reach the endpoint",
    "IPAddressDeny": "loopback is allowed: the endpoint's default address",
    "PrivateUsers": "capabilities inside a user namespace do not let it load BPF",
    "DeviceAllow": "ProtectClock= itself lets the RTC be read",
    "ProcSubset": "it would hide /proc/sys, where the histogram's bucket bounds come from",
}

ESTABLISHED = 'tcptrace_handshakes_total{{family="4",outcome="established",path="{}"}}'


# ----------------------------------------------------------------------------- the unit
# ------------------------------------------------------------------------------ tests
def need_analyze() -> None:
    require(shutil.which("systemd-analyze") is not None, "needs systemd-analyze (Debian: systemd)")


def need_emulation() -> None:
    kernel_ready()
    need_analyze()  # resolves SystemCallFilter='s @groups
    require(shutil.which("setpriv") is not None and shutil.which("unshare") is not None,
            "needs setpriv and unshare (util-linux)")
    require(ctypes.util.find_library("seccomp") is not None, "needs libseccomp2")
    require(INSTALLED_TOOL.exists(), f"needs {INSTALLED_TOOL} (make setup)")


def status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def loopback_handshake() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        with socket.create_connection(server.getsockname(), timeout=5):
            server.accept()[0].close()


def test_exec_start_serves_and_counts_under_the_units_user_capabilities_and_sandbox(tmp_path):
    need_emulation()
    run, p = sandboxed(tmp_path)
    try:
        polls = poll_until_ready(run)
        # the port is bound before the compile: a probe sees 503 first, then 200 for good
        assert polls[0].ready[0] == 503 and polls[-1].ready[0] == 200, polls[0]

        # the process the emulation made is the one the unit describes
        st = status(run.proc.pid)
        assert st["Uid"].split() == [str(p["uid"])] * 4 and st["Gid"].split() == [str(p["uid"])] * 4
        ambient = privileges.mask(p["ambient"])
        assert int(st["CapEff"], 16) == int(st["CapAmb"], 16) == ambient, st
        assert int(st["CapBnd"], 16) == privileges.mask(p["bounding"]), st
        assert st["NoNewPrivs"] == "1" and st["Seccomp"] == "2", st
        mounts = {mp: (opts[0], fs) for mp, opts, fs in mount_table(run.proc.pid)}
        assert mounts["/"][0] == "ro" and mounts["/tmp"] == ("rw", "tmpfs"), mounts
        assert mounts["/sys/kernel/tracing"][0] == "ro", mounts  # read-only is enough
        # ProtectKernelTunables= hides it; bcc reads it for kprobes only
        kallsyms = Path(f"/proc/{run.proc.pid}/root/proc/kallsyms")  # as the service sees it
        assert not kallsyms.exists() or kallsyms.stat().st_mode & 0o777 == 0

        # a handshake made once ready is counted, both ends (host-wide counters: >=)
        base = f"http://127.0.0.1:{run.port}/metrics"
        code, body = get(base)
        assert code == 200, body
        # the histogram's bounds come from /proc/sys: the sandbox must leave it readable
        # (ProcSubset=pid would not, and the tool would silently use the defaults)
        sysctl = Path(f"/proc/{run.proc.pid}/root/proc/sys/net/ipv4/tcp_syn_retries")
        assert sysctl.read_text().strip(), "the service cannot read /proc/sys"
        bounds = {float(b) for b in re.findall(
            r'tcptrace_handshake_duration_seconds_bucket\{[^}]*le="([^"+]+)"', body)}
        assert bounds == set(buckets_from_sysctls()), sorted(bounds)
        before = {end: sample(body, ESTABLISHED.format(end)) for end in ("active", "passive")}
        loopback_handshake()
        end = time.monotonic() + 10  # counted in the kernel at the tracepoint: at once
        while time.monotonic() < end:
            body = get(base)[1]
            after = {e: sample(body, ESTABLISHED.format(e)) for e in before}
            if all(after[e] >= before[e] + 1 for e in before):
                break
            time.sleep(0.1)
        assert all(after[e] >= before[e] + 1 for e in before), (before, after)
    except BaseException:
        try:
            run.proc.wait(5)  # a crashing tool gets to finish writing its traceback
        except subprocess.TimeoutExpired:
            pass
        raise
    finally:
        # systemctl stop sends SIGTERM: anything but a clean exit would mark the unit failed
        rc = run.stop(signal.SIGTERM)
        print(run.stderr)  # the tool's own account, shown by pytest if anything above failed
    assert rc == 0 and not run.outlived_signal, run.stderr


# Run in the tool's place by the test below: what each protection should refuse, tried.
PROBE = r"""
import ctypes, errno, json, mmap, os, socket
libc = ctypes.CDLL(None, use_errno=True)
def attempt(f):
    try:
        r = f()
        if isinstance(r, int) and r < 0:
            return errno.errorcode[ctypes.get_errno()]
        return "ok"
    except OSError as e:
        return errno.errorcode[e.errno]
def listing(path):
    try:
        return sorted(os.listdir(path))
    except OSError as e:
        return errno.errorcode[e.errno]
def suid():
    open("/tmp/suid", "w").close()
    os.chmod("/tmp/suid", 0o4755)
def by_handle():  # how CAP_DAC_READ_SEARCH could reach files outside the mount namespace
    class Handle(ctypes.Structure):
        _fields_ = [("size", ctypes.c_uint), ("type", ctypes.c_int),
                    ("bytes", ctypes.c_ubyte * 128)]
    h, mount_id = Handle(128), ctypes.c_int()
    if libc.name_to_handle_at(-100, b"/usr", ctypes.byref(h), ctypes.byref(mount_id), 0):
        return -1
    fd = libc.open_by_handle_at(os.open("/usr", os.O_RDONLY), ctypes.byref(h), os.O_RDONLY)
    return -1 if fd < 0 else None
tmp = listing("/tmp")
print(json.dumps({
    "unix": attempt(lambda: socket.socket(socket.AF_UNIX).close()),
    "netlink": attempt(lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW).close()),
    "inet": attempt(lambda: socket.socket().close()),
    "wx": attempt(lambda: mmap.mmap(-1, 4096,
                                    prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)),
    "usr": attempt(lambda: open("/usr/.tcptrace-probe", "w")),
    "tmp": tmp, "root": listing("/root"),
    "nice": attempt(lambda: os.setpriority(os.PRIO_PROCESS, 0, 1)),
    "personality": attempt(lambda: libc.personality(0x0008)),
    "suid": attempt(suid),
    "by_handle": attempt(by_handle),
    "pid1": os.path.exists("/proc/1"),
    "tracefs_ro": bool(os.statvfs("/sys/kernel/tracing").f_flag & os.ST_RDONLY),
    "userns": attempt(lambda: libc.unshare(0x10000000)),  # last: it would drop capabilities
}))
"""


def test_the_emulation_enforces_what_the_unit_says(tmp_path):
    """Each protection the emulation claims, tried from inside it: without this, a no-op
    emulation would let the test above pass for the wrong reason. (Each of these succeeds for
    the same user outside the sandbox.)"""
    need_emulation()
    (tmp_path / "staging").mkdir()
    p = plan(service(), tmp_path / "staging", free_port())
    p["argv"] = [sys.executable, "-c", PROBE]
    out = subprocess.run(emulated(p), cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    s = p["seccomp"]
    assert got["inet"] == "ok"
    assert got["unix"] == ("ok" if "AF_UNIX" in s["families"] else "EAFNOSUPPORT")
    assert got["netlink"] == ("ok" if "AF_NETLINK" in s["families"] else "EAFNOSUPPORT")
    assert got["wx"] == ("EPERM" if s["mdwe"] else "ok")
    assert got["usr"] == ("EROFS" if p["protect_system"] == "strict" else "EACCES")
    if p["private_tmp"]:
        # empty, but for a kept checkout (a CI clone under /tmp)
        kept = sorted({Path(k).relative_to("/tmp").parts[0] for k in p["keep"]
                       if under(k, "/tmp")})
        assert got["tmp"] == kept, got["tmp"]
    if p["protect_home"] == "yes":
        # empty and mode 000 (listable with CAP_DAC_READ_SEARCH), but for a kept checkout
        kept = sorted({Path(k).relative_to("/root").parts[0] for k in p["keep"]
                       if under(k, "/root")})
        assert got["root"] in (kept, "EACCES"), got["root"]
    assert got["nice"] == ("EPERM" if "setpriority" not in s["calls"] else "ok")  # ~@resources
    assert got["userns"] == ("EPERM" if s["restrict_namespaces"] else "ok")
    assert got["personality"] == ("EPERM" if s["lock_personality"] else "ok")
    assert got["suid"] == ("EPERM" if s["restrict_suid_sgid"] else "ok")
    if "CAP_DAC_READ_SEARCH" in p["ambient"]:  # the unit's comment counts on SystemCallFilter=
        assert got["by_handle"] == "EPERM", "open_by_handle_at() reaches past the mounts"
    assert got["pid1"] is (p["protect_proc"] not in ("invisible", "noaccess"))
    assert got["tracefs_ro"] is p["protect_kernel_tunables"]


def test_the_unit_without_cap_dac_read_search_cannot_attach(tmp_path):
    """Why the unit grants a third capability: tracefs is root's, and bcc reads it."""
    need_emulation()
    svc = service()
    # as uid 0 it would read tracefs as its owner; the unit is meant to run as another user
    assert boolean(svc, "DynamicUser") or last(svc, "User", "root") != "root"
    caps = [c for c in words(svc, "AmbientCapabilities") if c != "CAP_DAC_READ_SEARCH"]
    assert caps != words(svc, "AmbientCapabilities"), "the unit no longer grants it: measure again"
    run, _ = sandboxed(tmp_path, caps)
    try:
        run.proc.wait(START_TIMEOUT)
    finally:
        rc = run.stop()
    # if this starts passing, nothing reads tracefs any more: drop the capability from the unit
    assert rc == 1 and not run.ready_line, run.stderr
    # what stops it is tracefs, said in one line before any BPF work (privileges.missing)
    assert run.stderr.strip() == ("tcptrace-bpf: error: cannot read tracefs (root's, mode "
                                  "0700): run as root, or grant CAP_DAC_READ_SEARCH too "
                                  "(README: Privileges)"), run.stderr


def analyze_root(where: Path, unit_text: str, binary: bool = True) -> Path:
    """A root for `systemd-analyze --root`: the host's own units (for the targets the unit
    refers to), the unit under test, and an executable where ExecStart= says, so the real
    unit text verifies on a machine that has nothing installed in /usr/local."""
    host_units = Path("/usr/lib/systemd/system")
    shutil.copytree(host_units, where / "usr/lib/systemd/system", symlinks=True)
    (where / "etc/systemd/system").mkdir(parents=True)
    (where / "etc/systemd/system/tcptrace-bpf.service").write_text(unit_text)
    if binary:
        exe = where / shlex.split(last(service(), "ExecStart"))[0].lstrip("/")
        exe.parent.mkdir(parents=True)
        exe.write_text("#!/bin/sh\n")
        exe.chmod(0o755)
    return where


def analyze(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["systemd-analyze", *args, "tcptrace-bpf.service"], capture_output=True,
                          text=True, timeout=120)


def test_systemd_analyze_verify_is_clean(tmp_path):
    need_analyze()
    text = UNIT.read_text()
    out = analyze("verify", f"--root={analyze_root(tmp_path / 'as-is', text)}")
    # verify exits 0 on a misspelt or unparsable setting too, only warning: hence no output at all
    assert out.returncode == 0 and out.stdout + out.stderr == "", out.stdout + out.stderr

    # the same check fails on the faults it is there for, so the pass above is not vacuous
    typo = text.replace("ProtectHome=", "ProtectHomes=")
    bad = analyze("verify", f"--root={analyze_root(tmp_path / 'typo', typo)}")
    assert "Unknown key" in bad.stderr, bad.stderr
    missing = analyze("verify", f"--root={analyze_root(tmp_path / 'missing', text, binary=False)}")
    assert missing.returncode != 0 and "is not executable" in missing.stderr, missing.stderr


def test_systemd_analyze_security_exposure_is_no_worse_than_measured(tmp_path):
    need_analyze()
    root = analyze_root(tmp_path, UNIT.read_text())
    out = analyze("security", "--offline=yes", f"--root={root}")
    m = re.search(r"Overall exposure level for tcptrace-bpf\.service: (\d+\.\d+)", out.stdout)
    assert m, out.stdout + out.stderr
    assert float(m.group(1)) <= MEASURED_EXPOSURE, out.stdout
    # the score is rounded: dropping one small protection (MemoryDenyWriteExecute=, 0.1) does
    # not move it, the list of what is missing does
    items = json.loads(analyze("security", "--offline=yes", f"--root={root}",
                               "--json=short").stdout)
    missing = {i["json_field"] for i in items if i["set"] is False}
    assert missing == set(ACCEPTED_EXPOSURES), (missing - set(ACCEPTED_EXPOSURES),
                                                set(ACCEPTED_EXPOSURES) - missing)
