"""The two bpf(2) commands bcc's Python module lacks, through the raw system call:

- BPF_LINK_CREATE: attach a cgroup program as a link, which the kernel detaches when the
  last file descriptor closes, so a tracer that dies (even by SIGKILL) leaves nothing behind
  at the cgroup root (bcc's attach_func uses BPF_PROG_ATTACH, which outlives the process).
- BPF_PROG_TEST_RUN: run a raw-tracepoint program once, on request, with chosen arguments.
"""

from __future__ import annotations

import ctypes
import os
import platform

_NR_BPF = {"x86_64": 321, "aarch64": 280, "riscv64": 280, "ppc64le": 361, "s390x": 351}
BPF_PROG_TEST_RUN, BPF_LINK_CREATE = 10, 28
BPF_CGROUP_INET_INGRESS = 0

_libc = ctypes.CDLL(None, use_errno=True)


class _LinkCreate(ctypes.Structure):
    _fields_ = [("prog_fd", ctypes.c_uint32), ("target_fd", ctypes.c_uint32),
                ("attach_type", ctypes.c_uint32), ("flags", ctypes.c_uint32),
                ("_rest", ctypes.c_uint64 * 6)]


class _TestRun(ctypes.Structure):
    _fields_ = [("prog_fd", ctypes.c_uint32), ("retval", ctypes.c_uint32),
                ("data_size_in", ctypes.c_uint32), ("data_size_out", ctypes.c_uint32),
                ("data_in", ctypes.c_uint64), ("data_out", ctypes.c_uint64),
                ("repeat", ctypes.c_uint32), ("duration", ctypes.c_uint32),
                ("ctx_size_in", ctypes.c_uint32), ("ctx_size_out", ctypes.c_uint32),
                ("ctx_in", ctypes.c_uint64), ("ctx_out", ctypes.c_uint64),
                ("flags", ctypes.c_uint32), ("cpu", ctypes.c_uint32),
                ("batch_size", ctypes.c_uint32), ("_pad", ctypes.c_uint32)]


def _bpf(cmd: int, attr: ctypes.Structure) -> int:
    nr = _NR_BPF.get(platform.machine())
    if nr is None:
        raise OSError(0, f"bpf(2) number unknown for {platform.machine()}")
    ret = _libc.syscall(nr, cmd, ctypes.byref(attr), ctypes.sizeof(attr))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ret


def link_cgroup(prog_fd: int, cgroup_dir: str, attach_type: int = BPF_CGROUP_INET_INGRESS) -> int:
    """Attach a cgroup program to the cgroup at `cgroup_dir`, beside any others there
    (links are always multi-attach); returns the link's fd: close it to detach."""
    cg = os.open(cgroup_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return _bpf(BPF_LINK_CREATE, _LinkCreate(prog_fd=prog_fd, target_fd=cg,
                                                 attach_type=attach_type))
    finally:
        os.close(cg)


def run_raw_tp(prog_fd: int, *args: int) -> int:
    """Run a raw-tracepoint program once with ctx->args[] = args; returns its return value."""
    ctx = (ctypes.c_uint64 * len(args))(*args)
    attr = _TestRun(prog_fd=prog_fd, ctx_size_in=ctypes.sizeof(ctx),
                    ctx_in=ctypes.addressof(ctx))
    _bpf(BPF_PROG_TEST_RUN, attr)
    return attr.retval


def cgroup2_root() -> str:
    """Where the cgroup v2 hierarchy is mounted (the root of this cgroup namespace)."""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            pre, _, post = line.partition(" - ")
            if post.startswith("cgroup2 "):
                return pre.split()[4]
    raise OSError(0, "no cgroup v2 hierarchy is mounted")
