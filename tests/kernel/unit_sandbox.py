"""The emulation of deploy/systemd/tcptrace-bpf.service that tests/kernel/test_systemd_unit.py
runs the unit's ExecStart= under. systemd is not PID 1 on the test machines, so the unit cannot
be started there: the unit file is parsed and what it asks for is applied by hand, the way
systemd's executor does, to the real ExecStart= command line (only the binary's path and the
port differ): namespaces by unshare, mounts by mount(2) in the new mount namespace, user and
capabilities by setpriv, system call filters by libseccomp. Every [Service] setting is listed
in EMULATED or VERIFY_ONLY; a setting in neither fails plan(), so that a new one is not silently
left out of the emulation."""

import ctypes
import ctypes.util
import errno
import json
import os
import pwd
import shlex
import socket
import subprocess
import sys
from pathlib import Path

from tests.background import ROOT, Background, free_port

UNIT = ROOT / "deploy/systemd/tcptrace-bpf.service"
# The console script `pip install` makes: what ExecStart= names once installed.
INSTALLED_TOOL = Path(sys.executable).parent / "tcptrace-bpf"

# Applied to the process by the emulation below.
EMULATED = {
    "ExecStart", "Environment", "DynamicUser", "User", "CapabilityBoundingSet",
    "AmbientCapabilities", "NoNewPrivileges", "UMask", "ProtectSystem", "ProtectHome",
    "PrivateTmp", "PrivateDevices", "PrivateIPC", "PrivateMounts", "ProtectKernelTunables",
    "ProtectKernelLogs", "ProtectControlGroups", "ProtectClock", "ProtectHostname",
    "ProtectProc", "ProcSubset", "RestrictAddressFamilies", "RestrictNamespaces",
    "LockPersonality", "MemoryDenyWriteExecute", "RestrictRealtime", "RestrictSUIDSGID",
    "SystemCallArchitectures", "SystemCallFilter", "SystemCallErrorNumber",
}
# Only systemd itself can apply these: the restart logic, and the IP firewall (a BPF program
# systemd attaches to the unit's cgroup). systemd-analyze verify checks their syntax.
VERIFY_ONLY = {"Type", "Restart", "RestartSec", "IPAddressAllow", "IPAddressDeny"}


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Section -> key -> values in order, as systemd reads them: a key may repeat (list
    settings add up), an empty assignment empties the list, a trailing backslash continues."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        if value.strip():
            current.setdefault(key.strip(), []).append(value.strip())
        else:
            current[key.strip()] = []
    return sections


def service() -> dict[str, list[str]]:
    return parse_unit(UNIT.read_text())["Service"]


def last(svc: dict, key: str, default: str = "") -> str:
    return svc[key][-1] if svc.get(key) else default


def boolean(svc: dict, key: str) -> bool:
    return last(svc, key, "no").lower() in ("yes", "true", "on", "1")


def words(svc: dict, key: str) -> list[str]:
    return [w for v in svc.get(key, []) for w in v.split()]


def syscall_groups() -> dict[str, list[str]]:
    """systemd's own @group -> members (groups or calls), from `systemd-analyze syscall-filter`."""
    out = subprocess.run(["systemd-analyze", "syscall-filter"], capture_output=True, text=True,
                         check=True).stdout
    groups: dict[str, list[str]] = {}
    members: list[str] = []
    for line in out.splitlines():
        if line.startswith("@"):
            members = groups.setdefault(line.strip(), [])
        elif line.strip() and not line.strip().startswith("#") and line.startswith(" "):
            members.append(line.strip())
    return groups


def expand(names: list[str], groups: dict[str, list[str]]) -> set[str]:
    calls: set[str] = set()
    for name in names:
        calls |= expand(groups[name], groups) if name.startswith("@") else {name}
    return calls


def syscall_filter(svc: dict, groups: dict[str, list[str]]) -> tuple[bool, set[str]]:
    """(allow list?, calls) of SystemCallFilter=: the first line decides whether it is an
    allow or a deny list; later lines of the other kind take calls out of it."""
    allow_list, calls = None, set()
    for value in svc.get("SystemCallFilter", []):
        deny = value.startswith("~")
        named = expand(value.lstrip("~").split(), groups)
        if allow_list is None:
            allow_list = not deny
        calls = calls - named if deny == allow_list else calls | named
    if allow_list:
        # systemd allows these whatever the list says (systemd.exec(5), SystemCallFilter=)
        calls |= {"execve", "exit", "exit_group", "getrlimit", "rt_sigreturn", "sigreturn",
                  "clock_gettime", "gettimeofday", "time", "nanosleep", "clock_nanosleep"}
    return bool(allow_list), calls


def setpriv_caps(names: list[str]) -> str:
    return ",".join(["-all"] + [f"+{n.removeprefix('CAP_').lower()}" for n in names])


def dynamic_uid() -> int:
    """A uid from systemd's DynamicUser= range that names nobody here, as systemd picks."""
    for uid in range(61184, 65520):
        try:
            pwd.getpwuid(uid)
        except KeyError:
            return uid
    raise RuntimeError("no free uid in 61184..65519")


def plan(svc: dict, staging: Path, port: int, caps: list[str] | None = None) -> dict:
    """Everything the emulation applies, from the unit; `caps` replaces both capability sets
    (to measure a smaller set under the same unit)."""
    unknown = set(svc) - EMULATED - VERIFY_ONLY
    assert not unknown, f"decide whether the emulation must apply {unknown} (EMULATED/VERIFY_ONLY)"
    exec_start = shlex.split(last(svc, "ExecStart"))
    assert exec_start[0].startswith("/"), exec_start  # no -@+! prefixes: none is emulated
    listen = exec_start.index("--listen") + 1
    argv = [str(INSTALLED_TOOL), *exec_start[1:]]
    argv[listen] = f"127.0.0.1:{port}"  # the unit's own 9725 may be taken on a shared host
    if boolean(svc, "DynamicUser"):
        uid = dynamic_uid()
    else:
        user = last(svc, "User", "root")
        uid = pwd.getpwnam(user).pw_uid
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/"}
    for value in svc.get("Environment", []):
        env.update(kv.split("=", 1) for kv in shlex.split(value))
    bounding = words(svc, "CapabilityBoundingSet") if caps is None else caps
    ambient = words(svc, "AmbientCapabilities") if caps is None else caps
    groups = syscall_groups()
    allow_list, calls = syscall_filter(svc, groups)
    home = [p for p in ("/home", "/root", "/run/user") if Path(p).is_dir()]
    error_name = last(svc, "SystemCallErrorNumber")
    assert last(svc, "SystemCallArchitectures", "native") == "native", \
        "the emulation's filters (libseccomp's) refuse calls of other architectures"
    return {
        "argv": argv, "env": env, "uid": uid, "bounding": bounding, "ambient": ambient,
        "no_new_privs": boolean(svc, "NoNewPrivileges"), "umask": last(svc, "UMask", "0022"),
        "staging": str(staging),
        # the stand-ins for /usr/local/bin/tcptrace-bpf (venv, checkout) must stay visible
        # through ProtectHome=, as an install under /usr/local or /opt would
        "keep": [str(ROOT)] + ([] if Path(sys.prefix).is_relative_to(ROOT) else [sys.prefix]),
        "protect_system": last(svc, "ProtectSystem", "no"),
        "protect_home": last(svc, "ProtectHome", "no"), "home": home,
        "private_tmp": boolean(svc, "PrivateTmp"),
        "private_devices": boolean(svc, "PrivateDevices"),
        "protect_kernel_tunables": boolean(svc, "ProtectKernelTunables"),
        "protect_kernel_logs": boolean(svc, "ProtectKernelLogs"),
        "protect_control_groups": boolean(svc, "ProtectControlGroups"),
        "protect_proc": last(svc, "ProtectProc", "default"),
        "proc_subset": last(svc, "ProcSubset", "all"),
        "seccomp": {
            "allow_list": allow_list, "calls": sorted(calls),
            "errno": getattr(errno, error_name) if error_name else None,
            "families": words(svc, "RestrictAddressFamilies"),
            "mdwe": boolean(svc, "MemoryDenyWriteExecute"),
            "lock_personality": boolean(svc, "LockPersonality"),
            "restrict_realtime": boolean(svc, "RestrictRealtime"),
            "restrict_suid_sgid": boolean(svc, "RestrictSUIDSGID"),
            "restrict_namespaces": boolean(svc, "RestrictNamespaces"),
            "protect_clock": sorted(expand(["@clock"], groups))
            if boolean(svc, "ProtectClock") else [],
            "raw_io": sorted(expand(["@raw-io"], groups))  # PrivateDevices= implies ~@raw-io
            if boolean(svc, "PrivateDevices") else [],
            "protect_hostname": boolean(svc, "ProtectHostname"),
            "protect_kernel_logs": boolean(svc, "ProtectKernelLogs"),
        },
        "namespaces": ["--mount", "--propagation", "private"]
        + (["--uts"] if boolean(svc, "ProtectHostname") else [])
        + (["--ipc"] if boolean(svc, "PrivateIPC") else []),
    }


# ------------------------------------------------------------------------ the emulation
# Runs as `python -c ENTRY STAGE PLAN` from the checkout: "mounts" as root in the new
# namespaces, then (through setpriv) "confine" as the unit's user, which execs ExecStart=.
ENTRY = "from tests.kernel.unit_sandbox import stage; stage()"

TMP_DIRS = ("/tmp", "/var/tmp")  # what PrivateTmp= replaces
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_BIND, MS_REC, MNT_DETACH = 4096, 16384, 2
# ProtectKernelTunables= (systemd's namespace.c): read-only, and hidden
PROC_TUNABLES = ["/proc/acpi", "/proc/apm", "/proc/asound", "/proc/bus", "/proc/fs", "/proc/irq",
                 "/proc/latency_stats", "/proc/mtrr", "/proc/scsi", "/proc/sys",
                 "/proc/sysrq-trigger", "/proc/timer_stats"]
PROC_HIDDEN = ["/proc/kallsyms", "/proc/kcore"]


def _mount(src, dst, fstype, flags: int, data: str | None = None) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    args = [None if x is None else str(x).encode() for x in (src, dst, fstype, data)]
    if libc.mount(args[0], args[1], args[2], ctypes.c_ulong(flags), args[3]) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount({src}, {dst}, {fstype}, {flags:#x}, {data}): {os.strerror(err)}")


def _umount(path) -> None:
    if ctypes.CDLL(None, use_errno=True).umount2(str(path).encode(), MNT_DETACH) != 0:
        raise OSError(ctypes.get_errno(), f"umount {path}")


def mount_table(pid: int | str = "self") -> list[tuple[str, list[str], str]]:
    """(mount point, per-mount options, file system type) as process `pid` sees them."""
    rows = []
    with open(f"/proc/{pid}/mountinfo") as f:
        for line in f:
            left, right = line.split(" - ")
            fields = left.split()
            rows.append((fields[4].encode().decode("unicode_escape"), fields[5].split(","),
                         right.split()[0]))
    return rows


def under(path: str, top: str) -> bool:
    return top == "/" or path == top or path.startswith(top.rstrip("/") + "/")


def _read_only(top: str, skip: tuple = ()) -> None:
    """Every mount at or below `top` read-only; `top` becomes a mount point if it was none."""
    if top != "/" and not any(mp == top for mp, _, _ in mount_table()):
        _mount(top, top, None, MS_BIND | MS_REC)
    for mp, opts, _ in mount_table():
        if under(mp, top) and not any(under(mp, s) for s in skip):
            kept = sum(f for o, f in (("nosuid", MS_NOSUID), ("nodev", MS_NODEV),
                                      ("noexec", MS_NOEXEC)) if o in opts)
            _mount(None, mp, None, MS_REMOUNT | MS_BIND | MS_RDONLY | kept)


def _inaccessible(staging: Path, path: str) -> None:
    """What systemd's InaccessiblePaths= does: an empty mode-000 file or directory on top."""
    if not os.path.lexists(path):
        return
    src = staging / ("inaccessible-dir" if os.path.isdir(path) else "inaccessible-file")
    _mount(src, path, None, MS_BIND)
    _mount(None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY)


def _private_dev(host_dev: Path) -> None:
    _mount("tmpfs", "/dev", "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=0755")
    for node in ("null", "zero", "full", "random", "urandom", "tty"):
        Path("/dev", node).touch()
        _mount(host_dev / node, f"/dev/{node}", None, MS_BIND)
    for d in ("pts", "shm"):
        Path("/dev", d).mkdir()
    _mount("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC,
           "newinstance,ptmxmode=0666,mode=0620")
    _mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2"),
                         ("ptmx", "pts/ptmx")):
        os.symlink(target, f"/dev/{name}")


def _apply_mounts(p: dict) -> None:
    staging = Path(p["staging"])
    (staging / "inaccessible-dir").mkdir()
    (staging / "inaccessible-file").touch()
    for x in ("inaccessible-dir", "inaccessible-file"):
        os.chmod(staging / x, 0)
    # what later mounts cover but must still be reached: the host's /dev nodes (for
    # PrivateDevices=), the stand-in install (through ProtectHome=)
    held = staging / "held"
    (held / "dev").mkdir(parents=True)
    _mount("/dev", held / "dev", None, MS_BIND | MS_REC)
    keep = []
    for i, path in enumerate(p["keep"]):
        if p["protect_home"] != "no" and any(under(path, h) for h in p["home"]):
            (held / f"keep{i}").mkdir()
            _mount(path, held / f"keep{i}", None, MS_BIND | MS_REC)
            keep.append((held / f"keep{i}", path))

    system = p["protect_system"]
    if system == "strict":
        _read_only("/", skip=("/dev", "/proc", "/sys"))
    elif system in ("yes", "true", "full"):
        for top in ["/usr", "/boot", "/efi"] + (["/etc"] if system == "full" else []):
            if os.path.isdir(top):
                _read_only(top)
    if p["private_devices"]:
        _private_dev(held / "dev")
    home = p["protect_home"]
    for top in p["home"] if home not in ("no", "false") else []:
        kept = [(src, dst) for src, dst in keep if under(dst, top)]
        if home == "read-only":
            _read_only(top)
        elif kept or home == "tmpfs":
            _mount("tmpfs", top, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755")
            for src, dst in kept:
                Path(dst).mkdir(parents=True, exist_ok=True)
                _mount(src, dst, None, MS_BIND | MS_REC)
            _read_only(top)
        else:
            _inaccessible(staging, top)
    proc = ([f"hidepid={p['protect_proc']}"] if p["protect_proc"] != "default" else []) \
        + (["subset=pid"] if p["proc_subset"] == "pid" else [])
    if proc:  # a procfs instance of its own, as systemd mounts for these
        _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, ",".join(proc))
    if p["protect_kernel_tunables"]:
        for path in PROC_TUNABLES:
            if os.path.exists(path):
                _read_only(path)
        for path in PROC_HIDDEN:
            _inaccessible(staging, path)
        _read_only("/sys", skip=() if p["protect_control_groups"] else ("/sys/fs/cgroup",))
    elif p["protect_control_groups"]:
        _read_only("/sys/fs/cgroup")
    if p["protect_kernel_logs"]:
        for path in ("/proc/kmsg", "/dev/kmsg"):
            _inaccessible(staging, path)
    _umount(held / "dev")
    for src, _ in keep:
        _umount(src)
    if p["private_tmp"]:  # last: it covers the staging directory
        # a stand-in install under /tmp (a CI clone) stays reachable, as one in /opt would:
        # held by an O_PATH descriptor across the cover, bound back through /proc/self/fd
        held_tmp = [(os.open(path, os.O_PATH), path) for path in p["keep"]
                    if any(under(path, d) for d in TMP_DIRS)]
        for d in TMP_DIRS:
            _mount("tmpfs", d, "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
        for fd, path in held_tmp:
            Path(path).mkdir(parents=True, exist_ok=True)
            _mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC)
            _read_only(path)
            os.close(fd)


class _Filter:
    """One seccomp filter through libseccomp (the library systemd uses too). Like any filter
    libseccomp builds, it kills calls of other architectures: SystemCallArchitectures=native."""
    ALLOW, KILL_PROCESS = 0x7FFF0000, 0x80000000
    NE, EQ, GE, MASKED_EQ = 1, 4, 5, 7

    class Cmp(ctypes.Structure):
        _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                    ("a", ctypes.c_uint64), ("b", ctypes.c_uint64)]

    def __init__(self, default: int):
        self.lib = ctypes.CDLL(ctypes.util.find_library("seccomp"), use_errno=True)
        self.lib.seccomp_init.restype = ctypes.c_void_p
        self.ctx = ctypes.c_void_p(self.lib.seccomp_init(ctypes.c_uint32(default)))
        assert self.ctx.value, "seccomp_init failed"

    @staticmethod
    def fail_with(e: int) -> int:
        return 0x00050000 | e

    def add(self, action: int, name: str, *cmps: tuple) -> None:
        nr = self.lib.seccomp_syscall_resolve_name(name.encode())
        if nr < 0:
            return  # no such call on this architecture
        arr = (self.Cmp * len(cmps))(*(self.Cmp(*(c + (0,) * (4 - len(c)))) for c in cmps))
        rc = self.lib.seccomp_rule_add_array(self.ctx, ctypes.c_uint32(action), ctypes.c_int(nr),
                                             ctypes.c_uint(len(cmps)), arr)
        if rc < 0:
            raise OSError(-rc, f"seccomp rule {name} {cmps}: {os.strerror(-rc)}")

    def load(self) -> None:
        rc = self.lib.seccomp_load(self.ctx)
        if rc < 0:
            raise OSError(-rc, f"seccomp_load: {os.strerror(-rc)}")
        self.lib.seccomp_release(self.ctx)


def _apply_seccomp(s: dict) -> None:
    """The unit's filters, as systemd builds them (src/shared/seccomp-util.c), simplified
    where a comment says so."""
    F = _Filter
    EPERM = F.fail_with(errno.EPERM)
    deny = F(F.ALLOW)
    families = s["families"]
    if families:
        inverted = families[0].startswith("~")
        named = {getattr(socket, fam.lstrip("~")) for fam in families}
        for fam in range(64):
            if (fam in named) == inverted:
                deny.add(F.fail_with(errno.EAFNOSUPPORT), "socket", (0, F.EQ, fam))
        if not inverted:
            deny.add(F.fail_with(errno.EAFNOSUPPORT), "socket", (0, F.GE, 64))
    if s["mdwe"]:
        wx = 0x2 | 0x4  # PROT_WRITE | PROT_EXEC
        deny.add(EPERM, "mmap", (2, F.MASKED_EQ, wx, wx))
        deny.add(EPERM, "mprotect", (2, F.MASKED_EQ, 0x4, 0x4))
        deny.add(EPERM, "pkey_mprotect", (2, F.MASKED_EQ, 0x4, 0x4))
        deny.add(EPERM, "shmat", (2, F.MASKED_EQ, 0o100000, 0o100000))  # SHM_EXEC
    if s["lock_personality"]:
        deny.add(EPERM, "personality", (0, F.NE, 0))  # PER_LINUX, the one it runs with
    if s["restrict_realtime"]:
        for policy in (1, 2, 6):  # SCHED_FIFO, SCHED_RR, SCHED_DEADLINE
            deny.add(EPERM, "sched_setscheduler", (1, F.MASKED_EQ, 0xFF, policy))
    if s["restrict_suid_sgid"]:
        for bit in (0o4000, 0o2000):
            for call, mode in (("chmod", 1), ("fchmod", 1), ("fchmodat", 2), ("fchmodat2", 2),
                               ("creat", 1), ("mkdir", 1), ("mkdirat", 2), ("mknod", 1),
                               ("mknodat", 2)):
                deny.add(EPERM, call, (mode, F.MASKED_EQ, bit, bit))
            o_creat = 0o100
            for call, flags in (("open", 1), ("openat", 2)):
                deny.add(EPERM, call, (flags, F.MASKED_EQ, o_creat, o_creat),
                         (flags + 1, F.MASKED_EQ, bit, bit))
    if s["restrict_namespaces"]:
        for flag in (0x20000, 0x80, 0x02000000, 0x04000000, 0x08000000, 0x10000000,
                     0x20000000, 0x40000000):  # CLONE_NEWNS, NEWTIME, NEWCGROUP ... NEWNET
            deny.add(EPERM, "unshare", (0, F.MASKED_EQ, flag, flag))
            deny.add(EPERM, "clone", (0, F.MASKED_EQ, flag, flag))
        deny.add(EPERM, "setns")
        deny.add(F.fail_with(errno.ENOSYS), "clone3")  # flags behind a pointer: libc falls back
    for call in s["protect_clock"] + s["raw_io"]:
        deny.add(EPERM, call)
    if s["protect_hostname"]:
        deny.add(EPERM, "sethostname")
        deny.add(EPERM, "setdomainname")
    if s["protect_kernel_logs"]:
        deny.add(EPERM, "syslog")
    deny.load()
    if s["calls"]:  # last, as systemd does: seccomp() itself is outside most allow lists
        fail = F.fail_with(s["errno"]) if s["errno"] else F.KILL_PROCESS
        if s["allow_list"]:
            f = F(fail)
            for call in s["calls"]:
                f.add(F.ALLOW, call)
        else:
            f = F(F.ALLOW)
            for call in s["calls"]:
                f.add(fail, call)
        f.load()


def _setpriv(p: dict) -> list[str]:
    ambient = setpriv_caps(p["ambient"])
    user = [] if p["uid"] == 0 else [f"--reuid={p['uid']}", f"--regid={p['uid']}"]
    return ["setpriv", *user, "--clear-groups", f"--inh-caps={ambient}",
            f"--ambient-caps={ambient}", f"--bounding-set={setpriv_caps(p['bounding'])}",
            *(["--no-new-privs"] if p["no_new_privs"] else [])]


def stage() -> None:
    name, p = sys.argv[1], json.loads(sys.argv[2])
    if name == "mounts":
        _apply_mounts(p)
        os.execvp("setpriv", _setpriv(p) + ["--", sys.executable, "-c", ENTRY, "confine",
                                            sys.argv[2]])
    os.umask(int(p["umask"], 8))
    _apply_seccomp(p["seccomp"])
    os.chdir("/")
    os.execve(p["argv"][0], p["argv"], p["env"])


def emulated(p: dict) -> list[str]:
    """The command that runs p["argv"] as the unit would (stage() does the work)."""
    return ["unshare", *p["namespaces"], "--", sys.executable, "-c", ENTRY, "mounts", json.dumps(p)]


def sandboxed(tmp_path: Path, caps: list[str] | None = None) -> tuple[Background, dict]:
    """The unit's ExecStart= starting under the emulated unit; `port` set for poll_until_ready."""
    port = free_port()
    (tmp_path / "staging").mkdir()
    p = plan(service(), tmp_path / "staging", port, caps)
    run = Background(emulated(p), "serving http",
                     env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
    run.port = port
    return run, p
