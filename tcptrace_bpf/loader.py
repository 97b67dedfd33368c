"""The only module that imports bcc: builds cflags, picks a backend by trial load, attaches,
polls the ring buffer and reads the kernel-side loss counters."""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import os
import time
import platform
from dataclasses import dataclass, field
from enum import Enum
from importlib import resources
from pathlib import Path
from typing import Callable, Optional

from . import bpfsys, wire
from .btf import BTF, BTFError, VMLINUX_BTF
from .listeners import Counts, Listener, counts_of, from_kernel
from .ringbuf import RingReader
from .model import OpenPath, Outcome
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
        return ([f"-D{name}=offsetof(struct {s}, {m})" for name, (s, m) in OFFSETS.items()]
                + [f"-D{name}={m}" for name, (_, m) in ENUMS.items()],
                "kernel headers (no BTF)")
    try:
        btf = BTF.from_file(btf_path)
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
    """A loaded and attached set of programs. Use as a context manager."""

    def __init__(self, bpf, caps: Capabilities, ring_size: int):
        self.bpf, self.caps, self.ring_size = bpf, caps, ring_size
        self._ring = None
        self.records_read = 0       # records taken from the ring buffer (RingReader only)
        self.half_open_expired = 0  # table entries dropped by expire_half_open()
        self._ingress_link = -1     # the cgroup_skb link: closing it detaches
        self._snapshot_fd = -1

    def _attach_listener_side(self, bcc) -> str:
        """The listener-side programs beyond the autoloaded tracepoints: cgroup_skb ingress
        at the cgroup v2 root (every socket of every namespace below it) as a link, and the
        queue snapshot program. Returns where, for Capabilities.listener_side; a failure
        leaves the rest of the tracer working and says why."""
        try:
            root = bpfsys.cgroup2_root()
            ingress = self.bpf.load_func(b"tt_listen_ingress", bcc.BPF.CGROUP_SKB)
            self._snapshot_fd = self.bpf.load_func(b"tt_listener_snapshot",
                                                   bcc.BPF.RAW_TRACEPOINT).fd
            self._ingress_link = bpfsys.link_cgroup(ingress.fd, root)
        except Exception as exc:  # bcc raises bare Exception for a refused load
            return f"off ({first_line(exc)})"
        return f"cgroup_skb ingress at {root}"

    @property
    def listener_side(self) -> bool:
        return self._ingress_link >= 0

    def listeners(self) -> list[Listener]:
        """Every tracked listener, its queue figures read now (the snapshot program, run
        once per listener)."""
        table, out = self.bpf["listen_socks"], []
        for key in list(table.keys()):
            if self._snapshot_fd >= 0:
                bpfsys.run_raw_tp(self._snapshot_fd, key.value)
            try:
                out.append(from_kernel(key.value, table[key]))
            except KeyError:
                pass  # deleted meanwhile: a new listener at the address, seen next time
        return out

    def forget_listener(self, addr: int) -> None:
        with contextlib.suppress(KeyError):
            del self.bpf["listen_socks"][ctypes.c_uint64(addr)]

    def listen_ports(self) -> dict[int, Counts]:
        """Per local port counters; port 0: ports the map had no room for."""
        return {k.value: counts_of(v) for k, v in self.bpf["listen_ports"].items()}

    @classmethod
    def start(cls, attach: str = "auto", settings: Settings = Settings()) -> "BpfPrograms":
        bcc = import_bcc()
        headers = kernel_headers()
        offsets, offsets_from = offset_cflags()
        order = AUTO_ORDER if attach == "auto" else (Backend(attach),)
        trials: list[BackendTrial] = []
        for backend in order:
            if backend is Backend.KPROBE and (why := _kprobes_possible()):
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
            progs = cls(bpf, Capabilities(backend, offsets_from, headers, trials,
                                          forced=attach != "auto"),
                        settings.ringbuf_pages * mmap.PAGESIZE)
            progs.caps.listener_side = progs._attach_listener_side(bcc)
            return progs
        raise NoBackendError(trials)

    def open_ring(self, on_record: Callable[[bytes], None],
                  on_batch: Optional[Callable[[RingReader], int]] = None) -> None:
        """on_record per record; on_batch, if given, drains the whole ring at once where the
        ring is read from its map (x86-64; see RingReader), else on_record is used."""
        events = self.bpf["events"]
        if platform.machine() in ("x86_64", "AMD64"):
            self._ring = RingReader(events.map_fd, self.ring_size, on_record, on_batch)
            return

        def _cb(_ctx, data, size):
            self.records_read += 1
            on_record(ctypes.string_at(data, size))
        self._ring = _cb  # keep a reference: bcc holds only a C pointer
        events.open_ring_buffer(_cb)

    def poll(self, timeout_ms: int) -> None:
        """Wait `timeout_ms`, then take everything in the ring. The programs send no wakeups
        (BPF_RB_NO_WAKEUP), so the wait is a plain sleep and the take is one batch."""
        if isinstance(self._ring, RingReader):
            time.sleep(timeout_ms / 1000)
        else:
            self.bpf.ring_buffer_poll(timeout_ms)
        self.drain()

    def drain(self) -> None:
        if isinstance(self._ring, RingReader):
            self.records_read += self._ring.drain()
        elif self._ring is not None:
            self.bpf.ring_buffer_consume()

    def kernel_lost(self) -> dict[str, int]:
        """Losses on the kernel side by reason (summary.KERNEL_REASONS, zeros included)."""
        stats = self.bpf["stats"]
        lost = {r.value: int(sum(stats[ctypes.c_int(i)])) for i, r in enumerate(KERNEL_STATS)}
        lost[LossReason.HALF_OPEN_EXPIRED.value] = self.half_open_expired
        return lost

    def aggregates(self) -> dict[str, list[int]]:
        """Export mode's kernel counters, summed over CPUs (layout: wire.handshake_index,
        wire.duration_index; "rtx" is SYNs per path, then SYN-ACKs)."""
        out = {}
        for name in ("handshakes", "rtx", "duration", "flagged"):
            table = self.bpf[f"agg_{name}"]
            values = [0] * len(table)
            for key, per_cpu in table.items():
                values[key.value] = sum(per_cpu)
            out[name] = values
        return out

    def open_counts(self) -> dict[tuple[OpenPath, Outcome], int]:
        """Opens the kernel resolved and the filters kept, by path and outcome (both
        families), summed over CPUs: exact whatever the ring buffer dropped. Only those seen."""
        per_index = [0] * (len(wire.AGG_PATHS) * len(wire.AGG_OUTCOMES) * len(wire.AGG_FAMILIES))
        for key, per_cpu in self.bpf["agg_handshakes"].items():
            per_index[key.value] = sum(per_cpu)
        out = {}
        for p, path in enumerate(OpenPath):
            for o, outcome in enumerate(Outcome):
                n = sum(per_index[wire.handshake_index(p, o, f)]
                        for f in range(len(wire.AGG_FAMILIES)))
                if n:
                    out[(path, outcome)] = n
        return out

    def tracked_sockets(self) -> int:
        return sum(1 for _ in self.bpf["opens"].keys())

    def expire_half_open(self, older_than_ns: int) -> int:
        """Drop table entries with no activity since `older_than_ns` (monotonic): opens whose
        end no hook saw. Returns how many went, for the caller to count."""
        table, gone = self.bpf["opens"], 0
        for key, rec in list(table.items()):
            if rec.ts_ns < older_than_ns:
                try:
                    del table[key]
                    gone += 1
                except KeyError:
                    pass  # resolved in the kernel meanwhile
        self.half_open_expired += gone
        return gone

    def seed_listeners(self, owners) -> int:
        """Owners of listeners that predate tracing (procfs.listener_owners()), so their
        passive opens are attributed too; listen() calls from now on are seen live."""
        table = self.bpf["listeners"]
        n = 0
        for o in owners:
            key = table.Key(netns=o.netns, port=o.port)
            if key in table:
                continue
            leaf = table.Leaf(cgroup_id=o.cgroup, pid=o.pid)
            leaf.comm = o.comm.encode()[:15]
            table[key] = leaf
            n += 1
        return n

    def compiled_record_type(self):
        """struct tcptrace_record as bcc compiled it (a ctypes class), for the wire test.
        bcc's own helper does not know the __uN types, so the fields are mapped here."""
        import re
        from bcc.libbcc import lib
        scalar = {"__u64": ctypes.c_uint64, "__u32": ctypes.c_uint32, "__u16": ctypes.c_uint16,
                  "__u8": ctypes.c_uint8, "char": ctypes.c_char}
        fields = []
        module, name = self.bpf.module, b"events"
        for i in range(lib.bpf_perf_event_fields(module, name)):
            fname, ftype = lib.bpf_perf_event_field(module, name, i).decode().split("#", 1)
            m = re.match(r"(\S+) ?\[(\d+)\]$", ftype)
            fields.append((fname, scalar[m.group(1)] * int(m.group(2)) if m else scalar[ftype]))
        return type("tcptrace_record", (ctypes.Structure,), {"_fields_": fields})

    def close(self) -> None:
        if self._ingress_link >= 0:
            os.close(self._ingress_link)
            self._ingress_link = -1
        if isinstance(self._ring, RingReader):
            self._ring.close()
            self._ring = None
        if self.bpf is not None:
            self.bpf.cleanup()
            self.bpf = None

    def __enter__(self) -> "BpfPrograms":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


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
    For kernels without kprobes, where attaching is impossible."""
    bcc = import_bcc()
    kernel_headers()
    offsets, _ = offset_cflags()
    bpf = bcc.BPF(src_file=str(BPF_SOURCE).encode(), cflags=cflags(Backend.KPROBE, settings, offsets))
    try:
        return [fn for fn in KPROBES.values() if bpf.load_func(fn.encode(), bcc.BPF.KPROBE).fd >= 0]
    finally:
        bpf.cleanup()
