"""bpf(2) through the raw system call: what the resident process needs without bcc (whose
LLVM would stay mapped in it), and what bcc's Python module lacks:

- BPF_LINK_CREATE: attach a cgroup program as a link, which the kernel detaches when the
  last file descriptor closes, so a tracer that dies (even by SIGKILL) leaves nothing behind
  at the cgroup root (bcc's attach_func uses BPF_PROG_ATTACH, which outlives the process).
- BPF_PROG_TEST_RUN: run a raw-tracepoint program once, on request, with chosen arguments.
- Map: a map read and written by its file descriptor (lookup, update, delete, iteration,
  batched where the kernel can), its shape asked of the kernel (BPF_OBJ_GET_INFO_BY_FD).
- fentry_trial: load and attach a two-instruction fentry program, to learn whether the kernel
  takes fentry programs at all before anything is compiled.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct
from typing import Iterator, Optional

_NR_BPF = {"x86_64": 321, "aarch64": 280, "riscv64": 280, "ppc64le": 361, "s390x": 351}
BPF_MAP_LOOKUP_ELEM, BPF_MAP_UPDATE_ELEM, BPF_MAP_DELETE_ELEM, BPF_MAP_GET_NEXT_KEY = 1, 2, 3, 4
BPF_PROG_LOAD, BPF_PROG_TEST_RUN, BPF_OBJ_GET_INFO_BY_FD = 5, 10, 15
BPF_RAW_TRACEPOINT_OPEN, BPF_MAP_LOOKUP_BATCH, BPF_LINK_CREATE = 17, 24, 28
BPF_CGROUP_INET_INGRESS = 0
BPF_ANY, BPF_NOEXIST = 0, 1
BPF_PROG_TYPE_TRACING, BPF_TRACE_FENTRY = 26, 24
# map types whose values are one per possible CPU (PERCPU_HASH, PERCPU_ARRAY, LRU_PERCPU_HASH,
# PERCPU_CGROUP_STORAGE)
_PERCPU_TYPES = (5, 6, 10, 21)
_ENOTSUPP = 524  # the kernel's own "not supported", which strerror() does not know

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


class _MapElem(ctypes.Structure):
    _fields_ = [("map_fd", ctypes.c_uint32), ("_pad", ctypes.c_uint32), ("key", ctypes.c_uint64),
                ("value", ctypes.c_uint64), ("flags", ctypes.c_uint64)]  # value: or next_key


class _MapBatch(ctypes.Structure):
    _fields_ = [("in_batch", ctypes.c_uint64), ("out_batch", ctypes.c_uint64),
                ("keys", ctypes.c_uint64), ("values", ctypes.c_uint64),
                ("count", ctypes.c_uint32), ("map_fd", ctypes.c_uint32),
                ("elem_flags", ctypes.c_uint64), ("flags", ctypes.c_uint64)]


class _InfoByFd(ctypes.Structure):
    _fields_ = [("bpf_fd", ctypes.c_uint32), ("info_len", ctypes.c_uint32),
                ("info", ctypes.c_uint64)]


class _MapInfo(ctypes.Structure):  # the head of struct bpf_map_info
    _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32),
                ("key_size", ctypes.c_uint32), ("value_size", ctypes.c_uint32),
                ("max_entries", ctypes.c_uint32), ("map_flags", ctypes.c_uint32),
                ("name", ctypes.c_char * 16)]


class _ProgLoad(ctypes.Structure):  # up to attach_btf_id; the kernel zero-fills the rest
    _fields_ = [("prog_type", ctypes.c_uint32), ("insn_cnt", ctypes.c_uint32),
                ("insns", ctypes.c_uint64), ("license", ctypes.c_uint64),
                ("log_level", ctypes.c_uint32), ("log_size", ctypes.c_uint32),
                ("log_buf", ctypes.c_uint64), ("kern_version", ctypes.c_uint32),
                ("prog_flags", ctypes.c_uint32), ("prog_name", ctypes.c_char * 16),
                ("prog_ifindex", ctypes.c_uint32), ("expected_attach_type", ctypes.c_uint32),
                ("prog_btf_fd", ctypes.c_uint32), ("func_info_rec_size", ctypes.c_uint32),
                ("func_info", ctypes.c_uint64), ("func_info_cnt", ctypes.c_uint32),
                ("line_info_rec_size", ctypes.c_uint32), ("line_info", ctypes.c_uint64),
                ("line_info_cnt", ctypes.c_uint32), ("attach_btf_id", ctypes.c_uint32)]


class _RawTpOpen(ctypes.Structure):
    _fields_ = [("name", ctypes.c_uint64), ("prog_fd", ctypes.c_uint32), ("_pad", ctypes.c_uint32)]


def _bpf(cmd: int, attr: ctypes.Structure) -> int:
    nr = _NR_BPF.get(platform.machine())
    if nr is None:
        raise OSError(0, f"bpf(2) number unknown for {platform.machine()}")
    ret = _libc.syscall(nr, cmd, ctypes.byref(attr), ctypes.sizeof(attr))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, "Operation not supported" if err == _ENOTSUPP else os.strerror(err))
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


def raw_tracepoint_open(prog_fd: int, name: Optional[str] = None) -> int:
    """Attach a raw tracepoint program to `name`, or a tracing (fentry) program to the
    function it was loaded for (no name); returns the fd that keeps it attached."""
    buf = ctypes.create_string_buffer(name.encode()) if name else None
    return _bpf(BPF_RAW_TRACEPOINT_OPEN,
                _RawTpOpen(name=ctypes.addressof(buf) if buf else 0, prog_fd=prog_fd))


# r0 = 0; exit
_RETURN_0 = bytes([0xB7, 0, 0, 0, 0, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0])


def fentry_trial(btf_func_id: int) -> Optional[str]:
    """Load a program that only returns 0 as fentry of the kernel function with this BTF id,
    and attach it (then let both go): None if the kernel took it, else what it said, in
    libbpf's words. Milliseconds, where compiling the real programs takes seconds."""
    insns = ctypes.create_string_buffer(_RETURN_0, len(_RETURN_0))
    lic = ctypes.create_string_buffer(b"GPL")
    attr = _ProgLoad(prog_type=BPF_PROG_TYPE_TRACING, insn_cnt=len(_RETURN_0) // 8,
                     insns=ctypes.addressof(insns), license=ctypes.addressof(lic),
                     prog_name=b"tt_fentry_trial", expected_attach_type=BPF_TRACE_FENTRY,
                     attach_btf_id=btf_func_id)
    try:
        prog = _bpf(BPF_PROG_LOAD, attr)
    except OSError as exc:
        return f"Failed to load program: {exc.strerror}"
    try:
        os.close(raw_tracepoint_open(prog))
    except OSError as exc:
        return f"Failed to attach program: {exc.strerror}"
    finally:
        os.close(prog)
    return None


def possible_cpus(path: str = "/sys/devices/system/cpu/possible") -> int:
    """How many values a per-CPU map holds per key (every possible CPU, online or not)."""
    with open(path) as f:
        text = f.read().strip()
    n = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        n += int(hi or lo) - int(lo) + 1
    return n


class _NoBatch(Exception):
    """This kernel has no batched lookup for this map type."""


class Map:
    """A BPF map by its fd (which this object owns: close() closes it). Keys and values are
    bytes as the kernel lays them out; per-CPU maps give one value per possible CPU."""

    BATCH = 4096  # entries per BPF_MAP_LOOKUP_BATCH: at most ~0.5 MiB of buffers for `opens`

    def __init__(self, fd: int, name: str = ""):
        info = _MapInfo()
        _bpf(BPF_OBJ_GET_INFO_BY_FD, _InfoByFd(bpf_fd=fd, info_len=ctypes.sizeof(info),
                                              info=ctypes.addressof(info)))
        self.fd, self.name = fd, name or info.name.decode()
        self.type, self.max_entries = info.type, info.max_entries
        self.key_size, self.value_size = info.key_size, info.value_size
        self.percpu = info.type in _PERCPU_TYPES
        self.ncpus = possible_cpus() if self.percpu else 1
        self.stride = (self.value_size + 7) & ~7 if self.percpu else self.value_size
        self.slot_size = self.stride * self.ncpus  # what one lookup returns
        self._batch = True  # until the kernel says it cannot

    def __repr__(self) -> str:
        return f"Map({self.name!r}, fd={self.fd})"

    def _elem(self, cmd: int, key: Optional[bytes], out_size: int = 0, value: bytes = b"",
              flags: int = 0) -> Optional[bytes]:
        kbuf = ctypes.create_string_buffer(key, self.key_size) if key is not None else None
        vbuf = ctypes.create_string_buffer(value or out_size, out_size or len(value)) \
            if (value or out_size) else None
        attr = _MapElem(map_fd=self.fd, key=ctypes.addressof(kbuf) if kbuf else 0,
                        value=ctypes.addressof(vbuf) if vbuf else 0, flags=flags)
        try:
            _bpf(cmd, attr)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return None
            raise
        return vbuf.raw if out_size else b""

    def lookup(self, key: bytes) -> Optional[bytes]:
        """The value (per-CPU maps: every CPU's, one after the other), None if absent."""
        return self._elem(BPF_MAP_LOOKUP_ELEM, key, self.slot_size)

    def per_cpu(self, value: bytes) -> list[bytes]:
        """A per-CPU map's value, one bytes per CPU."""
        s, n = self.stride, self.value_size
        return [value[i * s:i * s + n] for i in range(self.ncpus)]

    def update(self, key: bytes, value: bytes, flags: int = BPF_ANY) -> bool:
        """Write; False when BPF_NOEXIST found the key there already."""
        try:
            self._elem(BPF_MAP_UPDATE_ELEM, key, value=value, flags=flags)
        except OSError as exc:
            if exc.errno == errno.EEXIST and flags == BPF_NOEXIST:
                return False
            raise
        return True

    def delete(self, key: bytes) -> bool:
        """False if the key was not there (deleted meanwhile)."""
        return self._elem(BPF_MAP_DELETE_ELEM, key) is not None

    def keys(self) -> Iterator[bytes]:
        key = None
        while (key := self._elem(BPF_MAP_GET_NEXT_KEY, key, self.key_size)) is not None:
            yield key

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        """Every (key, value), read BATCH at a time where the kernel can (5.6+ for hash maps),
        else key by key. Entries added or deleted meanwhile may or may not appear."""
        if self._batch:
            try:
                yield from self._batched()
                return
            except _NoBatch:
                self._batch = False
        for key in list(self.keys()):
            value = self.lookup(key)
            if value is not None:
                yield key, value

    def _batched(self) -> Iterator[tuple[bytes, bytes]]:
        n = min(self.BATCH, max(self.max_entries, 1))
        tok = max(self.key_size, 8)  # hash maps' batch token is a u32 bucket, arrays' a key
        in_b, out_b = ctypes.create_string_buffer(tok), ctypes.create_string_buffer(tok)
        first, ks, vs = True, self.key_size, self.slot_size
        while True:
            keys, values = ctypes.create_string_buffer(n * ks), ctypes.create_string_buffer(n * vs)
            attr = _MapBatch(in_batch=0 if first else ctypes.addressof(in_b),
                             out_batch=ctypes.addressof(out_b), keys=ctypes.addressof(keys),
                             values=ctypes.addressof(values), count=n, map_fd=self.fd)
            done = False
            try:
                _bpf(BPF_MAP_LOOKUP_BATCH, attr)
            except OSError as exc:
                if exc.errno == errno.ENOSPC and attr.count == 0:
                    n *= 2  # one hash bucket holds more than n entries
                    continue
                if first and exc.errno in (errno.EINVAL, errno.EOPNOTSUPP, _ENOTSUPP):
                    raise _NoBatch() from exc  # nothing read yet: key by key instead
                if exc.errno != errno.ENOENT:
                    raise
                done = True  # the last entries (count of them, maybe 0)
            kraw, vraw = keys.raw, values.raw
            for i in range(attr.count):
                yield kraw[i * ks:(i + 1) * ks], vraw[i * vs:(i + 1) * vs]
            if done:
                return
            ctypes.memmove(in_b, out_b, tok)
            first = False

    def __len__(self) -> int:
        return sum(1 for _ in self.items())

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


U32, U64 = struct.Struct("<I"), struct.Struct("<Q")
