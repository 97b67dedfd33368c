"""The only module that imports bcc, and only in a short-lived loading process: that process
builds the cflags, picks a backend by trial load, compiles, loads and attaches, then hands the
file descriptors of the maps, programs and attachments to the process that started it and
exits. The resident process (BpfPrograms) keeps those descriptors, which keep the programs
attached, and reads the maps through bpf(2) (bpfsys.Map) and the ring buffer from its memory
map (ringbuf): bcc's LLVM and the parsed BTF never enter it, so it stays small.

    BpfPrograms.start()  --spawns-->  python -c ... _loading_process(fd)
      (attach, Settings)  --socketpair-->  bcc: compile, trial-load, attach
      BpfPrograms(fds)    <--SCM_RIGHTS--  Capabilities; map, program and attachment fds;
                                           the layouts bcc compiled; then os._exit
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import os
import pickle
import platform
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from enum import Enum
from importlib import resources
from pathlib import Path
from typing import Callable, Optional

from . import bpfsys, wire
from .bpfsys import U32, U64
from .btf import BTF, BTFError, VMLINUX_BTF
from .listeners import Counts, Listener, counts_of, from_kernel
from .model import OpenPath, Outcome
from .ringbuf import LibbpfRing, RingReader
from .summary import KERNEL_STATS, LossReason
from .tracker import Match

# The C programs are package data (bpf/ in the tree, tcptrace_bpf/bpf/ once installed); bcc
# wants a file path and an include directory, which a package on a file system gives.
BPF_DIR = Path(str(resources.files("tcptrace_bpf.bpf")))
BPF_SOURCE = BPF_DIR / "tcptrace.bpf.c"
HEADERS_CACHE = Path("/var/cache/tcptrace-bpf/kernel-headers")

# -D name -> (struct, member path): every struct field the BPF programs read, the one list. The
# C has none of its own: offset_cflags() gives each one, from BTF or the headers' offsetof().
OFFSETS = {
    "OFF_SKC_DADDR": ("sock_common", "skc_daddr"),
    "OFF_SKC_RCV_SADDR": ("sock_common", "skc_rcv_saddr"),
    "OFF_SKC_DPORT": ("sock_common", "skc_dport"),
    "OFF_SKC_NUM": ("sock_common", "skc_num"),
    "OFF_INET_SPORT": ("inet_sock", "inet_sport"),
    "OFF_SKC_FAMILY": ("sock_common", "skc_family"),
    "OFF_SKC_STATE": ("sock_common", "skc_state"),
    "OFF_SKC_V6_DADDR": ("sock_common", "skc_v6_daddr"),
    "OFF_SKC_V6_RCV_SADDR": ("sock_common", "skc_v6_rcv_saddr"),
    "OFF_SKC_NET": ("sock_common", "skc_net"),
    "OFF_NET_NS_INUM": ("net", "ns.inum"),
    "OFF_NET_SYNACK_RETRIES": ("net", "ipv4.sysctl_tcp_synack_retries"),
    "OFF_NET_SYN_RETRIES": ("net", "ipv4.sysctl_tcp_syn_retries"),
    "OFF_SK_ERR": ("sock", "sk_err"),
    "OFF_SK_ERR_SOFT": ("sock", "sk_err_soft"),
    "OFF_SK_PROTOCOL": ("sock", "sk_protocol"),
    "OFF_ICSK_SYN_RETRIES": ("inet_connection_sock", "icsk_syn_retries"),
    "OFF_TCP_TOTAL_RETRANS": ("tcp_sock", "total_retrans"),
    "OFF_TCP_SRTT_US": ("tcp_sock", "srtt_us"),
    "OFF_TCP_BYTES_ACKED": ("tcp_sock", "bytes_acked"),
    "OFF_SKB_CB": ("sk_buff", "cb"),
    "OFF_TCB_TCP_FLAGS": ("tcp_skb_cb", "tcp_flags"),
    "OFF_REQ_NUM_RETRANS": ("request_sock", "num_retrans"),
    "OFF_TREQ_SNT_SYNACK": ("tcp_request_sock", "snt_synack"),
    # listener side
    "OFF_SK_DROPS": ("sock", "sk_drops"),
    "OFF_SK_ACK_BACKLOG": ("sock", "sk_ack_backlog"),
    "OFF_SK_MAX_ACK_BACKLOG": ("sock", "sk_max_ack_backlog"),
    "OFF_ICSK_SYN_QLEN": ("inet_connection_sock", "icsk_accept_queue.qlen"),
    "OFF_NET_SYNCOOKIES": ("net", "ipv4.sysctl_tcp_syncookies"),
    "OFF_REQ_RSK_LISTENER": ("request_sock", "__req_common.skc_listener"),
    "OFF_TCP_TS_RECENT_STAMP": ("tcp_sock", "rx_opt.ts_recent_stamp"),
    "OFF_SK_REUSEPORT_CB": ("sock", "sk_reuseport_cb"),
}
# -D name -> (enum, member): kernel constants whose numbers move between versions
ENUMS = {
    "TT_REASON_LISTEN_OVERFLOW": ("skb_drop_reason", "SKB_DROP_REASON_TCP_LISTEN_OVERFLOW"),
    "TT_REASON_NO_SOCKET": ("skb_drop_reason", "SKB_DROP_REASON_NO_SOCKET"),
}
# Fields some kernels lack: given only when BTF has them; the C has an "absent" default.
OPTIONAL_OFFSETS = {"OFF_TCP_TOTAL_RTO_TIME": ("tcp_sock", "total_rto_time")}


class Backend(str, Enum):
    FENTRY = "fentry"
    KPROBE = "kprobe"
    TRACEPOINT = "tracepoint"


MAX_BUCKETS = 32  # TT_B0..TT_B31 in bpf/tcptrace.bpf.c
AUTO_ORDER = (Backend.FENTRY, Backend.KPROBE, Backend.TRACEPOINT)
# kernel functions hooked by the kprobe backend -> the program attached to each
KPROBES = {"tcp_set_state": "kp_tcp_set_state",
           "tcp_rcv_state_process": "kp_tcp_rcv_state_process",
           "tcp_send_synack": "kp_tcp_send_synack"}
# raw tracepoint -> its second program (bpf/tcptrace.bpf.c TT_DUAL), attached after the first
# (bcc autoloads that one): the kernel skips a raw tracepoint program nested in itself, never
# one nested in another program. The state-change and RST ones: tracepoint backend only.
SECOND_DELIVERIES = {"consume_skb": "tt_again_consume_skb",
                     "kfree_skb": "tt_again_kfree_skb"}
SECOND_DELIVERIES_TRACEPOINT = {"inet_sock_set_state": "tt_again_inet_sock_set_state",
                                "tcp_receive_reset": "tt_again_tcp_receive_reset"}


def second_key(tp: str) -> bytes:
    """Where a second delivery's attachment is kept in bcc's raw_tracepoint_fds (the first
    one's is the plain name), so bcc's cleanup() closes it and tests can detach it."""
    return f"{tp}#2".encode()


def attach_second(bpf, tp: str, fn_name: str) -> None:
    """Attach `fn_name` as a further program on raw tracepoint `tp` (bcc's own
    attach_raw_tracepoint takes one program per tracepoint)."""
    from bcc.libbcc import lib
    fn = bpf.load_func(fn_name.encode(), bpf.RAW_TRACEPOINT)
    fd = lib.bpf_attach_raw_tracepoint(fn.fd, tp.encode())
    if fd < 0:
        raise Exception(f"Failed to attach {fn_name} to raw tracepoint {tp}")
    bpf.raw_tracepoint_fds[second_key(tp)] = fd
# where the cheap fentry trial (bpfsys.fentry_trial) attaches: a function the backend hooks
FENTRY_TRIAL_FUNCTION = "tcp_set_state"
# the maps the resident process reads (the agg_ ones exist in export mode only)
MAPS = ("events", "opens", "stats", "listeners", "listen_socks", "listen_ports",
        "agg_handshakes", "agg_rtx", "agg_duration", "agg_flagged")
INGRESS = "cgroup_skb:tt_listen_ingress"  # the listener side's link, in BpfPrograms.attachments
SNAPSHOT = "tt_listener_snapshot"          # the queue snapshot program, run by fd


class LoaderError(Exception):
    """Tracing cannot start; the message says why and what to do."""


@dataclass(frozen=True)
class Settings:
    max_sockets: int = 65536
    # 4 MiB: 32,768 records of 120 bytes (+8 header), 0.58 s of the fastest loopback churn
    # measured here (56,000 opens/s) between two polls 0.2 s apart
    ringbuf_pages: int = 1024
    events: bool = False         # also emit one record per probe hit
    # export mode: count opens in kernel maps, histogram bounds in seconds (empty: off)
    aggregate_buckets: tuple[float, ...] = ()
    # trace's filters, decided in the kernel (filter_cflags); the default keeps everything
    match: Match = Match()


@dataclass(frozen=True)
class BackendTrial:
    """One backend's trial load: loaded, or why the kernel (or bcc) refused it."""
    backend: Backend
    loaded: bool
    reason: str = ""             # the first line libbpf or bcc said; "" when loaded

    @property
    def outcome(self) -> str:
        return "loaded" if self.loaded else self.reason

    def __str__(self) -> str:
        return f"{self.backend.value}: {self.outcome}"


class NoBackendError(LoaderError):
    """Every backend tried was refused; `trials` says why, per backend."""

    def __init__(self, trials: list[BackendTrial]):
        super().__init__("no backend could attach: " + "; ".join(map(str, trials)))
        self.trials = trials


@dataclass
class Capabilities:
    """What start-up decided, once, for the user to see."""
    backend: Backend
    offsets_from: str            # "BTF" or "kernel headers"
    headers: str                 # where bcc's kernel headers come from
    trials: list[BackendTrial] = field(default_factory=list)  # in the order tried
    forced: bool = False         # --attach named the backend: nothing was chosen
    listener_side: str = ""      # where the listener programs attached, or why they did not

    def describe(self) -> str:
        why = "forced" if self.forced or not self.trials else "; ".join(map(str, self.trials))
        return (f"backend {self.backend.value} ({why}); struct offsets from "
                f"{self.offsets_from}; headers {self.headers}; listeners {self.listener_side}")


def import_bcc():
    try:
        import bcc  # noqa: F401  (Debian's python3-bpfcc)
    except ImportError as exc:
        raise LoaderError("bcc Python module not found: run `make setup` "
                          "(installs Debian's python3-bpfcc)") from exc
    return bcc


def kernel_headers() -> str:
    """Make sure bcc finds a headers tree; return where it is."""
    build = Path("/lib/modules") / platform.release() / "build"
    if (build / "include").is_dir():
        return str(build)
    env = os.environ.get("BCC_KERNEL_SOURCE")
    if env and Path(env, "include").is_dir():
        return env
    tree = Path(os.environ.get("TCPTRACE_HEADERS_ROOT", HEADERS_CACHE)) / platform.release()
    if (tree / ".ready").exists():
        os.environ["BCC_KERNEL_SOURCE"] = str(tree)
        return str(tree)
    raise LoaderError(f"no kernel headers for {platform.release()}: run `make setup` "
                      "(scripts/kernel-headers.sh prepares them)")


def offset_cflags(btf_path: Path = VMLINUX_BTF) -> tuple[list[str], str]:
    """-D flags with every struct offset: from BTF, or without BTF the offsetof() the kernel
    headers give (optional fields then stay absent: the headers may lack them)."""
    if not btf_path.exists():
        return (["-DTT_STRUCTS_FROM_HEADERS"]
                + [f"-D{name}=offsetof(struct {s}, {m})" for name, (s, m) in OFFSETS.items()]
                + [f"-D{name}={m}" for name, (_, m) in ENUMS.items()],
                "kernel headers (no BTF)")
    try:
        btf = _btf(btf_path)
        flags = [f"-D{name}={btf.offsetof(s, m)}" for name, (s, m) in OFFSETS.items()]
        for name, (e, m) in ENUMS.items():
            try:
                flags.append(f"-D{name}={btf.enum_value(e, m)}")
            except BTFError:
                flags.append(f"-D{name}=-1")  # an older kernel without it: never matches
        for name, (s, m) in OPTIONAL_OFFSETS.items():
            try:
                flags.append(f"-D{name}={btf.offsetof(s, m)}")
            except BTFError:
                pass  # the C falls back to not reading the field
    except BTFError as exc:
        raise LoaderError(f"cannot read struct offsets from {btf_path}: {exc}") from exc
    return flags, "BTF"


def filter_cflags(match: Match) -> list[str]:
    """The filters in use as constants of bpf/tcptrace.bpf.c ("filters"): one -D each."""
    flags = []
    if match.port is not None:
        flags.append(f"-DTT_FILTER_PORT={match.port}")
    if match.family is not None:
        flags.append(f"-DTT_FILTER_FAMILY={wire.AF_INET if match.family == 4 else wire.AF_INET6}")
    if match.netns is not None:
        flags.append(f"-DTT_FILTER_NETNS={match.netns}U")
    if match.pid is not None:
        flags.append(f"-DTT_FILTER_PID={match.pid}U")
    if match.cgroup is not None:
        flags.append(f"-DTT_FILTER_CGROUP={match.cgroup}ULL")
    if match.failed:
        flags.append("-DTT_FILTER_FAILED")
    if match.slow is not None:
        flags.append(f"-DTT_FILTER_SLOW_NS={match.slow_ns}ULL")
    return flags


def cflags(backend: Backend, settings: Settings, offsets: list[str]) -> list[str]:
    # -w: the headers tree warns about itself; our own code is checked in tests/kernel
    flags = ["-w", f"-I{BPF_DIR}", f"-DBACKEND_{backend.name}",
             f"-DMAX_SOCKETS={settings.max_sockets}",
             f"-DRINGBUF_PAGES={settings.ringbuf_pages}", *offsets]
    flags += filter_cflags(settings.match)
    if settings.events:
        flags.append("-DTCPTRACE_EVENTS")
    if settings.aggregate_buckets:
        bounds = list(settings.aggregate_buckets)
        if len(bounds) > MAX_BUCKETS:
            raise LoaderError(f"{len(bounds)} histogram buckets; the kernel side takes "
                              f"at most {MAX_BUCKETS}")
        flags += ["-DTCPTRACE_AGGREGATE", f"-DTT_NBUCKETS={len(bounds)}"]
        bounds += [0] * (MAX_BUCKETS - len(bounds))  # unused: compiled out
        flags += [f"-DTT_B{i}={round(b * 1e9)}ULL" for i, b in enumerate(bounds)]
    return flags


@functools.lru_cache(maxsize=2)
def _btf(path: Path) -> BTF:
    """Parsed once per loading process: the offsets and the fentry trial both read it."""
    return BTF.from_file(path)


def _fentry_refused() -> Optional[str]:
    """Why the kernel takes no fentry program, or None: a two-instruction program loaded and
    attached at FENTRY_TRIAL_FUNCTION, in place of seconds of compiling the real ones for a
    kernel that then refuses them."""
    if not VMLINUX_BTF.exists():
        return "kernel has no BTF (fentry programs need it)"
    try:
        return bpfsys.fentry_trial(_btf(VMLINUX_BTF).func_id(FENTRY_TRIAL_FUNCTION))
    except (BTFError, OSError) as exc:
        return first_line(exc)


def _kprobes_possible() -> Optional[str]:
    """Why kprobes cannot attach at all, or None. The kernel's own interfaces, not bcc's flags."""
    # os.path.exists: a tracefs this user may not search reads as absent, not a traceback
    # (the session refused such a user before this: privileges.cannot_trace)
    if not (os.path.exists("/sys/bus/event_source/devices/kprobe")
            or os.path.exists("/sys/kernel/tracing/kprobe_events")
            or os.path.exists("/sys/kernel/debug/tracing/kprobe_events")):
        return "kernel has no kprobes (CONFIG_KPROBES unset)"
    return None


@contextlib.contextmanager
def kernel_messages():
    """Capture what libbcc/libbpf write to fd 2 during a trial load (compile warnings are off
    with -w); yields a getter of the first meaningful line, to explain a refused backend."""
    saved = os.dup(2)
    # in memory, not in /tmp: a sandbox may give the tracer no writable file system at all
    with open(os.memfd_create("tcptrace-bpf-stderr"), "w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        text: list[str] = []
        try:
            yield lambda: next((line.strip() for line in text if line.strip()), "")
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            text.extend(tmp.read().decode(errors="replace").splitlines())


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class BpfPrograms:
    """A loaded and attached set of programs, held by file descriptor: `maps` (bpfsys.Map by
    name), `programs` (program fds by function name), `attachments` (fds that keep a program
    attached: closing one detaches it; names as "tracepoint:sock:inet_sock_set_state",
    "raw_tracepoint:tcp_destroy_sock", "kprobe:tcp_set_state", "fentry:<function>", INGRESS).
    No bcc here. Use as a context manager."""

    def __init__(self, caps: Capabilities, maps: dict[str, bpfsys.Map], programs: dict[str, int],
                 attachments: dict[str, int], layouts: Optional[dict] = None):
        self.caps, self.maps, self.programs, self.attachments = caps, maps, programs, attachments
        # struct name -> (size, [(field, offset, size)]) as bcc compiled it, for the tests
        self.layouts = layouts or {}
        self.ring_size = maps["events"].max_entries  # a ring buffer's size is its max_entries
        self._ring = None
        self.records_read = 0       # records taken from the ring buffer
        self.half_open_expired = 0  # table entries dropped by expire_half_open()

    @property
    def listener_side(self) -> bool:
        return INGRESS in self.attachments

    def listeners(self) -> list[Listener]:
        """Every tracked listener, its queue figures read now (the snapshot program, run
        once per listener)."""
        table, out = self.maps["listen_socks"], []
        snapshot = self.programs.get(SNAPSHOT, -1)
        for key in list(table.keys()):
            addr = U64.unpack(key)[0]
            if snapshot >= 0:
                bpfsys.run_raw_tp(snapshot, addr)
            value = table.lookup(key)
            if value is not None:  # else deleted meanwhile: a new listener there, seen next time
                out.append(from_kernel(addr, value))
        return out

    def forget_listener(self, addr: int) -> None:
        self.maps["listen_socks"].delete(U64.pack(addr))

    def listen_ports(self) -> dict[int, Counts]:
        """Per local port counters; port 0: ports the map had no room for."""
        return {U32.unpack(k)[0]: counts_of(v) for k, v in self.maps["listen_ports"].items()}

    @classmethod
    def start(cls, attach: str = "auto", settings: Settings = Settings()) -> "BpfPrograms":
        """Load and attach in a loading process (_loading_process); keep what it hands over.
        Its errors arrive here as the LoaderError (NoBackendError) it raised."""
        answer, fds = _run_loading_process((attach, settings))
        try:
            if "error" in answer:
                trials = answer.get("trials")
                raise NoBackendError(trials) if trials else LoaderError(answer["error"])
            names = answer["maps"] + answer["programs"] + answer["attachments"]
            if len(names) != len(fds):
                raise LoaderError(f"the loading process handed over {len(fds)} file "
                                  f"descriptors for {len(names)} objects")
            given = iter(fds)
            map_fds = [(n, next(given)) for n in answer["maps"]]
            programs = {n: next(given) for n in answer["programs"]}
            attachments = {n: next(given) for n in answer["attachments"]}
            opened: dict[str, bpfsys.Map] = {}
            try:
                for name, fd in map_fds:
                    opened[name] = bpfsys.Map(fd, name)
            except OSError as exc:
                raise LoaderError(f"cannot read the maps handed over: {exc.strerror}") from exc
            fds = []  # from here on owned by the maps and the tracer
            return cls(answer["caps"], opened, programs, attachments, answer.get("layouts"))
        finally:
            for fd in fds:
                os.close(fd)

    def open_ring(self, on_record: Callable[[bytes], None], consumer=None,
                  on_batch: Optional[Callable[[RingReader], int]] = None) -> None:
        """Hand every record to `on_record` at each poll()/drain(). `consumer`: RingReader
        (x86-64's default) or LibbpfRing (elsewhere: it has the barriers). `on_batch`, if
        given, drains a RingReader's whole ring at once instead (fastpath.Batches.drain)."""
        if consumer is None:
            consumer = RingReader if platform.machine() in ("x86_64", "AMD64") else LibbpfRing
        if consumer is RingReader:
            self._ring = RingReader(self.maps["events"].fd, self.ring_size, on_record, on_batch)
        else:
            self._ring = consumer(self.maps["events"].fd, self.ring_size, on_record)

    def poll(self, timeout_ms: int) -> None:
        """Wait `timeout_ms`, then take everything in the ring. The programs send no wakeups
        (BPF_RB_NO_WAKEUP), so the wait is a plain sleep and the take is one batch."""
        time.sleep(timeout_ms / 1000)
        self.drain()

    def drain(self) -> None:
        if self._ring is not None:
            self.records_read += self._ring.drain()

    def kernel_lost(self) -> dict[str, int]:
        """Losses on the kernel side by reason (summary.KERNEL_REASONS, zeros included)."""
        stats = self.maps["stats"]
        lost = {}
        for i, r in enumerate(KERNEL_STATS):
            value = stats.lookup(U32.pack(i))
            lost[r.value] = _cpu_sum(stats, value) if value is not None else 0
        lost[LossReason.HALF_OPEN_EXPIRED.value] = self.half_open_expired
        return lost

    def aggregates(self) -> dict[str, list[int]]:
        """Export mode's kernel counters, summed over CPUs (layout: wire.handshake_index,
        wire.duration_index; "rtx" is SYNs per path, then SYN-ACKs)."""
        out = {}
        for name in ("handshakes", "rtx", "duration", "flagged"):
            table = self.maps[f"agg_{name}"]
            values = [0] * table.max_entries
            for key, per_cpu in table.items():
                values[U32.unpack(key)[0]] = _cpu_sum(table, per_cpu)
            out[name] = values
        return out

    def open_counts(self) -> dict[tuple[OpenPath, Outcome], int]:
        """Opens the kernel resolved and the filters kept, by path and outcome (both
        families), summed over CPUs: exact whatever the ring buffer dropped. Only those seen."""
        per_index = [0] * (len(wire.AGG_PATHS) * len(wire.AGG_OUTCOMES) * len(wire.AGG_FAMILIES))
        table = self.maps["agg_handshakes"]
        for key, per_cpu in table.items():
            per_index[U32.unpack(key)[0]] = _cpu_sum(table, per_cpu)
        out = {}
        for p, path in enumerate(OpenPath):
            for o, outcome in enumerate(Outcome):
                n = sum(per_index[wire.handshake_index(p, o, f)]
                        for f in range(len(wire.AGG_FAMILIES)))
                if n:
                    out[(path, outcome)] = n
        return out

    def tracked_sockets(self) -> int:
        return len(self.maps["opens"])

    def expire_half_open(self, older_than_ns: int) -> int:
        """Drop table entries with no activity since `older_than_ns` (monotonic): opens whose
        end no hook saw. Returns how many went, for the caller to count."""
        table = self.maps["opens"]
        stale = [key for key, rec in table.items()
                 if U64.unpack_from(rec, _RECORD_TS)[0] < older_than_ns]
        gone = sum(1 for key in stale if table.delete(key))  # else resolved meanwhile
        self.half_open_expired += gone
        return gone

    def seed_listeners(self, owners) -> int:
        """Owners of listeners that predate tracing (procfs.listener_owners()), so their
        passive opens are attributed too; listen() calls from now on are seen live."""
        table, n = self.maps["listeners"], 0
        for o in owners:
            key = wire.LISTENER_KEY.pack(o.netns, o.port)
            leaf = wire.OWNER.pack(o.cgroup or 0, o.pid, o.comm.encode()[:15])
            n += table.update(key, leaf, bpfsys.BPF_NOEXIST)  # False: known already
        return n

    def close(self) -> None:
        for fd in self.attachments.values():  # detaches: first, while the maps are there
            os.close(fd)
        self.attachments = {}
        if self._ring is not None:
            self._ring.close()
            self._ring = None
        for fd in self.programs.values():
            os.close(fd)
        self.programs = {}
        for m in self.maps.values():
            m.close()
        self.maps = {}

    def __enter__(self) -> "BpfPrograms":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_RECORD_TS = wire.field_offsets()["ts_ns"]  # an `opens` entry is a struct tcptrace_record


def _cpu_sum(table: bpfsys.Map, value: bytes) -> int:
    """A per-CPU u64 counter, summed over CPUs."""
    return sum(U64.unpack_from(value, i * table.stride)[0] for i in range(table.ncpus))


# ------------------------------------------------------------------ the loading process
# Message sizes: the answer is a pickle of a few KiB; SCM_RIGHTS takes at most 253 fds.
_MAX_MESSAGE, _MAX_FDS = 1 << 20, 253
_CHILD = ("import sys, json, importlib; sys.path[:] = json.loads(sys.argv[1]); "
          "importlib.import_module(sys.argv[2])._loading_process(int(sys.argv[3]))")


def _run_loading_process(request) -> tuple[dict, list[int]]:
    """Start the loading process, send it `request`, return its answer and the fds it sent.
    A new interpreter, not a fork: the caller may have threads (export's HTTP server)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with ours:
        try:
            # stdout to stderr: whatever bcc prints must not mix with `trace --json` output
            proc = subprocess.Popen(
                [sys.executable, "-c", _CHILD, json.dumps(sys.path), __name__,
                 str(theirs.fileno())],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, stdout=2)
        except OSError as exc:
            raise LoaderError(f"cannot start the loading process ({sys.executable}): "
                              f"{exc.strerror}") from exc
        finally:
            theirs.close()
        try:
            ours.send(pickle.dumps(request))
            data, fds, flags, _ = socket.recv_fds(ours, _MAX_MESSAGE, _MAX_FDS)
        except BaseException:
            proc.kill()  # a signal or an error here: the half-done load is of no use
            proc.wait()
            raise
        status = proc.wait()
    if flags & (socket.MSG_CTRUNC | socket.MSG_TRUNC):
        for fd in fds:
            os.close(fd)
        raise LoaderError("the loading process's answer did not fit its message")
    if not data:
        how = (f"killed by {signal.Signals(-status).name}" if status < 0
               else f"exit status {status}")
        raise LoaderError(f"the loading process ended ({how}) before it answered")
    return pickle.loads(data), fds


def _loading_process(fd: int) -> None:
    """The loading process's body: read the request, load and attach, answer with the fds,
    exit at once. No bcc cleanup runs (os._exit): it would detach what the resident process
    now holds. Every error reaches the resident process as a message, never a traceback."""
    # Signals are the resident process's to handle: it ends this one (SIGKILL) if it gives
    # up, and the kernel does if it dies first.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    sock = socket.socket(fileno=fd)
    fds: list[int] = []
    try:
        attach, settings = pickle.loads(sock.recv(_MAX_MESSAGE))
        answer, fds = _load_and_attach(attach, settings)
    except NoBackendError as exc:
        answer = {"error": str(exc), "trials": exc.trials}
    except LoaderError as exc:
        answer = {"error": str(exc)}
    except Exception as exc:  # a bug: still one line for the user
        answer = {"error": f"loading failed: {type(exc).__name__}: {first_line(exc)}"}
    try:
        socket.send_fds(sock, [pickle.dumps(answer)], fds)
    finally:
        sys.stdout.flush()
        os._exit(0)


def _load_and_attach(attach: str, settings: Settings) -> tuple[dict, list[int]]:
    bcc = import_bcc()
    headers = kernel_headers()
    offsets, offsets_from = offset_cflags()
    order = AUTO_ORDER if attach == "auto" else (Backend(attach),)
    trials: list[BackendTrial] = []
    for backend in order:
        why = (_kprobes_possible() if backend is Backend.KPROBE
               else _fentry_refused() if backend is Backend.FENTRY else None)
        if why:
            trials.append(BackendTrial(backend, False, why))
            continue
        said = str  # "" if kernel_messages() itself fails
        try:
            with kernel_messages() as said:
                bpf = _load(bcc, backend, cflags(backend, settings, offsets))
        except Exception as exc:  # bcc raises bare Exception for compile/load/attach
            # libbpf's own line ("Failed to load program: Operation not permitted")
            # says more than bcc's exception ("Need super-user privileges")
            trials.append(BackendTrial(backend, False, said() or first_line(exc)))
            continue
        trials.append(BackendTrial(backend, True))
        caps = Capabilities(backend, offsets_from, headers, trials, forced=attach != "auto")
        caps.listener_side, link = _attach_listener_side(bcc, bpf)
        return _handover(bcc, bpf, caps, link)
    raise NoBackendError(trials)


def _attach_listener_side(bcc, bpf) -> tuple[str, int]:
    """The listener-side programs beyond the autoloaded tracepoints: cgroup_skb ingress at
    the cgroup v2 root (every socket of every namespace below it) as a link, and the queue
    snapshot program (loaded: the resident process runs it by fd). Returns where, for
    Capabilities.listener_side, and the link's fd (-1: off); a failure leaves the rest of
    the tracer working and says why."""
    try:
        root = bpfsys.cgroup2_root()
        ingress = bpf.load_func(b"tt_listen_ingress", bcc.BPF.CGROUP_SKB)
        bpf.load_func(SNAPSHOT.encode(), bcc.BPF.RAW_TRACEPOINT)
        link = bpfsys.link_cgroup(ingress.fd, root)
    except Exception as exc:  # bcc raises bare Exception for a refused load
        return f"off ({first_line(exc)})", -1
    return f"cgroup_skb ingress at {root}", link


def _handover(bcc, bpf, caps: Capabilities, link: int) -> tuple[dict, list[int]]:
    """What the resident process gets: names in the answer, fds in the same order. Every
    kind of attachment bcc made is an fd whose last close detaches: perf events (tracepoints,
    and kprobes through the kprobe PMU), raw tracepoint and fentry link fds."""
    from bcc.libbcc import lib
    maps = {name: fd for name in MAPS
            if (fd := lib.bpf_table_fd(bpf.module, name.encode())) >= 0}
    programs = {name.decode(): fn.fd for name, fn in bpf.funcs.items()}
    attachments = {f"tracepoint:{tp.decode()}": fd for tp, fd in bpf.tracepoint_fds.items()}
    attachments.update({f"raw_tracepoint:{tp.decode()}": fd
                        for tp, fd in bpf.raw_tracepoint_fds.items()})
    attachments.update({f"fentry:{fn.decode()}": fd for fn, fd in bpf.kfunc_entry_fds.items()})
    for event, by_fn in bpf.kprobe_fds.items():  # event: b"p_tcp_set_state"
        attachments.update({f"kprobe:{event.decode()[2:]}": fd for fd in by_fn.values()})
    if link >= 0:
        attachments[INGRESS] = link
    answer = {"caps": caps, "maps": list(maps), "programs": list(programs),
              "attachments": list(attachments), "layouts": _compiled_layouts(bpf)}
    return answer, [*maps.values(), *programs.values(), *attachments.values()]


def _compiled_layouts(bpf) -> dict[str, tuple[int, list[tuple[str, int, int]]]]:
    """The structs as bcc compiled them: size and (field, offset, size) of each, for
    tests/kernel/test_backends.py to hold wire.MAP_LAYOUTS against."""
    def layout(cls):
        return ctypes.sizeof(cls), [(n, getattr(cls, n).offset, getattr(cls, n).size)
                                    for n, *_ in cls._fields_]
    out = {"tcptrace_record": layout(_record_type(bpf))}
    for struct_name, table, part in (("tcptrace_listener", "listen_socks", "Leaf"),
                                     ("tcptrace_listen_counts", "listen_ports", "Leaf"),
                                     ("tcptrace_listener_key", "listeners", "Key"),
                                     ("tcptrace_owner", "listeners", "Leaf")):
        out[struct_name] = layout(getattr(bpf[table], part))
    return out


def _record_type(bpf):
    """struct tcptrace_record as bcc compiled it (a ctypes class). bcc's own helper does not
    know the __uN types, so the fields are mapped here."""
    import re
    from bcc.libbcc import lib
    scalar = {"__u64": ctypes.c_uint64, "__u32": ctypes.c_uint32, "__u16": ctypes.c_uint16,
              "__u8": ctypes.c_uint8, "char": ctypes.c_char}
    fields = []
    module, name = bpf.module, b"events"
    for i in range(lib.bpf_perf_event_fields(module, name)):
        fname, ftype = lib.bpf_perf_event_field(module, name, i).decode().split("#", 1)
        m = re.match(r"(\S+) ?\[(\d+)\]$", ftype)
        fields.append((fname, scalar[m.group(1)] * int(m.group(2)) if m else scalar[ftype]))
    return type("tcptrace_record", (ctypes.Structure,), {"_fields_": fields})


def _load(bcc, backend: Backend, flags: list[str]):
    # Tracepoint and fentry programs attach as the module loads (bcc autoload);
    # a refused fentry load raises here, which is the trial.
    bpf = bcc.BPF(src_file=str(BPF_SOURCE).encode(), cflags=flags)
    try:
        second = dict(SECOND_DELIVERIES)
        if backend is Backend.TRACEPOINT:
            second.update(SECOND_DELIVERIES_TRACEPOINT)
        for tp, fn in second.items():
            attach_second(bpf, tp, fn)
        if backend is Backend.KPROBE:
            for event, fn in KPROBES.items():
                bpf.attach_kprobe(event=event.encode(), fn_name=fn.encode())
    except Exception:
        bpf.cleanup()
        raise
    return bpf


def verify_kprobe_programs(settings: Settings = Settings()) -> list[str]:
    """Compile the kprobe backend and pass each program through the verifier, unattached.
    For kernels without kprobes, where attaching is impossible. (In this process, with bcc:
    for checks and tests, not for the resident tracer.)"""
    bcc = import_bcc()
    kernel_headers()
    offsets, _ = offset_cflags()
    bpf = bcc.BPF(src_file=str(BPF_SOURCE).encode(), cflags=cflags(Backend.KPROBE, settings, offsets))
    try:
        return [fn for fn in KPROBES.values() if bpf.load_func(fn.encode(), bcc.BPF.KPROBE).fd >= 0]
    finally:
        bpf.cleanup()
