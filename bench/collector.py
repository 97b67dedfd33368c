"""The collector alone: decoder + tracker + a sink fed from a recording, no kernel, no BPF.

The recording is built by repeating the real records of tests/fixtures/normal4.json (one
active and one passive open of a loopback connection, recorded from the kernel) with skaddr,
addresses, ports and timestamps rewritten so that every connection is distinct (2 records per
connection). It is written in the format of `tcptrace-bpf record` (tcptrace_bpf/recording.py),
so `tcptrace-bpf replay FILE` reads it (run.py times that command); a tree without
recording.py gets a flat file of wire records instead.

    python bench/collector.py --connections 1000000 --build-only     # prints the file's path
    python bench/collector.py --connections 1000000 --sink prometheus [--checkpoint 100000 ...]

The second form feeds the file in-process (tracker + sink, as a live session does) and prints
one JSON line: records/s over the whole stream, and VmRSS at each checkpoint (connections fed).
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# --tree DIR: measure the tcptrace_bpf package of another checkout (run.py passes it)
TREE = Path(sys.argv[sys.argv.index("--tree") + 1]).resolve() if "--tree" in sys.argv else ROOT
sys.path.insert(0, str(TREE))

from tcptrace_bpf import wire  # noqa: E402
from tests import fixtures  # noqa: E402

CHUNK_RECORDS = 4096
CONN_INTERVAL_NS = 35_000  # about 28,000 connections/s of simulated time


def _template() -> tuple[bytes, bytes]:
    """The active and the passive record of one real loopback connection."""
    doc = fixtures.load("normal4")
    if doc.get("wire_version", 1) != wire.WIRE_VERSION:
        sys.exit(f"collector: tests/fixtures/normal4.json is wire version {doc.get('wire_version')}, "
                 f"tcptrace_bpf.wire is {wire.WIRE_VERSION}: re-record the fixtures")
    raw = doc["raw"]
    active = next(r for r in raw if wire.decode(r).states[0] == 7)   # CLOSE > SYN_SENT ...
    passive = next(r for r in raw if wire.decode(r).states[0] == 10)  # LISTEN > SYN_RECV ...
    return active, passive


def _recording_module():
    try:
        from tcptrace_bpf import recording
        return recording
    except ImportError:
        return None


def build_recording(path: Path, connections: int) -> Path:
    """Write `connections` distinct connections (2 records each) to `path`, once."""
    if path.exists():
        return path
    rec_mod = _recording_module()
    off = wire.field_offsets()
    active, passive = (bytearray(t) for t in _template())
    a0, p0 = wire.decode(bytes(active)), wire.decode(bytes(passive))
    u64, u16 = struct.Struct("<Q"), struct.Struct("<H")
    base_ts = a0.start_ns
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        writer = None
        if rec_mod:
            writer = rec_mod.Writer(f, rec_mod.Header(
                kernel=fixtures.load("normal4").get("kernel", "?"), backend="tracepoint",
                epoch_offset=0.0, tool_version="bench"))
        frame = rec_mod.FRAME.pack(rec_mod.FRAME_RECORD, wire.RECORD_SIZE) if rec_mod else b""
        buf = bytearray()
        for i in range(connections):
            t = base_ts + i * CONN_INTERVAL_NS
            client_ip = bytes((127, 1 + (i // 60000) // 65536 % 254,
                               (i // 60000) // 256 % 256, (i // 60000) % 256 or 1))
            cport = 1024 + i % 60000
            # active: client side; local = client
            u64.pack_into(active, off["ts_ns"], t + (a0.ts_ns - a0.start_ns))
            u64.pack_into(active, off["start_ns"], t)
            u64.pack_into(active, off["skaddr"], 0xffff888100000000 + i * 0x1000)
            active[off["saddr"]:off["saddr"] + 4] = client_ip
            u16.pack_into(active, off["sport"], cport)
            # passive: server's child; peer = client
            u64.pack_into(passive, off["ts_ns"], t + (p0.ts_ns - a0.start_ns))
            u64.pack_into(passive, off["start_ns"], t + (p0.start_ns - a0.start_ns))
            u64.pack_into(passive, off["skaddr"], 0xffff888200000000 + i * 0x1000)
            passive[off["daddr"]:off["daddr"] + 4] = client_ip
            u16.pack_into(passive, off["dport"], cport)
            buf += frame
            buf += active
            buf += frame
            buf += passive
            if len(buf) >= CHUNK_RECORDS * wire.RECORD_SIZE:
                f.write(buf)
                buf.clear()
        f.write(buf)
        if writer:
            writer.close(rec_mod.Trailer(ended_ns=base_ts + connections * CONN_INTERVAL_NS
                                         + 10**9, lost={}))
    os.replace(tmp, path)
    return path


def rss_kib(field: str = "VmRSS") -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return -1


def make_sink(kind: str):
    """(emit, flush) as the CLI wires them: JSON lines to a file, or Prometheus metrics."""
    if kind == "json":
        from tcptrace_bpf.sinks import jsonl
        out = open(os.devnull, "w")
        render = jsonl.render
        return (lambda item: out.write(render(item) + "\n")), out.flush
    from tcptrace_bpf.buckets import buckets_from_sysctls
    from tcptrace_bpf.sinks import prometheus as sink
    if hasattr(sink, "HandshakeMetrics"):      # since 2026-11-21 (cd0bd5b)
        metrics = sink.HandshakeMetrics(buckets_from_sysctls())
    else:                                      # c2021d2 and before
        from prometheus_client import CollectorRegistry
        metrics = sink.OpenMetrics(CollectorRegistry(), buckets_from_sysctls())
    return metrics.observe, (lambda: None)


def feed_in_process(path: Path, sink: str, checkpoints: list[int]) -> dict:
    """Feed the recording through Classifier + sink, as session.run() does for the live ring."""
    from tcptrace_bpf.tracker import Classifier
    emit, flush = make_sink(sink)
    tracker = Classifier(epoch_offset=0.0)
    size = wire.RECORD_SIZE
    per_conn = 2
    pending = sorted(checkpoints)
    rss = {}
    records = outputs = 0
    rss_before = rss_kib()
    rec_mod = _recording_module()
    t0 = time.perf_counter()
    with open(path, "rb") as f:
        if rec_mod:
            reader = rec_mod.Reader(f, str(path))
            it = iter(reader.records())
            chunks = iter(lambda: [r for _, r in zip(range(CHUNK_RECORDS), it)], [])
        else:
            chunks = iter(lambda: [c for c in [f.read(CHUNK_RECORDS * size)] if c][0:1], [])
            chunks = ([c[o:o + size] for o in range(0, len(c), size)] for (c,) in chunks)
        for chunk in chunks:
            for raw in chunk:
                for item in tracker.feed_bytes(raw):
                    emit(item)
                    outputs += 1
            flush()
            records += len(chunk)
            while pending and records >= pending[0] * per_conn:
                rss[pending.pop(0)] = rss_kib()
    elapsed = time.perf_counter() - t0
    return {"sink": sink, "records": records, "connections": records // per_conn,
            "outputs": outputs, "elapsed_s": round(elapsed, 3),
            "records_per_s": round(records / elapsed, 1),
            "rss_kib_before": rss_before,
            "rss_kib_at": {str(k): v for k, v in rss.items()},
            "hwm_kib": rss_kib("VmHWM"),
            "lost": dict(tracker.lost), "counted": sum(tracker.counts.values())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--connections", type=int, default=1_000_000)
    ap.add_argument("--checkpoint", type=int, action="append", default=[])
    ap.add_argument("--sink", choices=("json", "prometheus"), default="json")
    ap.add_argument("--recording", type=Path, default=None,
                    help="default bench/build/churn-v<wire version>-<connections>.rec")
    ap.add_argument("--tree", type=Path, default=ROOT, help="checkout whose package is measured")
    ap.add_argument("--build-only", action="store_true", help="write the recording, print its path")
    args = ap.parse_args()
    if args.recording is None:
        import hashlib
        kind = "rec" if _recording_module() else "flat"
        # keyed by the template records and the writer: a changed format never reads a stale file
        rec_src = Path(_recording_module().__file__).read_bytes() if _recording_module() else b""
        key = hashlib.sha256(b"".join(_template()) + rec_src).hexdigest()[:10]
        args.recording = (ROOT / "bench" / "build" /
                          f"churn-v{wire.WIRE_VERSION}-{key}-{args.connections}.{kind}")
    args.recording.parent.mkdir(parents=True, exist_ok=True)
    build_recording(args.recording, args.connections)
    if args.build_only:
        print(json.dumps({"path": str(args.recording), "connections": args.connections,
                          "records": 2 * args.connections,
                          "format": "recording" if _recording_module() else "flat"}))
        return
    checkpoints = sorted(set(args.checkpoint + [args.connections]))
    print(json.dumps(feed_in_process(args.recording, args.sink, checkpoints)), flush=True)


if __name__ == "__main__":
    main()
