"""ns per record of the compiled `--json` consumer (tcptrace_bpf/_fastpath.c) against the
Python path (Classifier.feed_bytes + jsonl.render), on the records of bench/collector.py's
synthetic churn (normal4's active and passive open, made distinct), no I/O.

    python bench/fastpath_micro.py [--connections 50000] [--repeat 5] [--batch 8192]

Records are rendered --batch at a time (replay's runs of 1 MiB hold about 8,400).

Prints one JSON line: best-of-repeat ns per record for each path."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.collector import build_recording  # noqa: E402
from tcptrace_bpf import fastpath, recording, wire  # noqa: E402
from tcptrace_bpf.sinks import jsonl  # noqa: E402
from tcptrace_bpf.tracker import Classifier  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--connections", type=int, default=50000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--batch", type=int, default=8192, help="records per render() call")
    args = ap.parse_args()
    if fastpath._fastpath is None:
        sys.exit("fastpath_micro: tcptrace_bpf._fastpath is not built")
    with tempfile.TemporaryDirectory() as tmp:
        path = build_recording(Path(tmp) / "churn.rec", args.connections)
        with open(path, "rb") as f:
            raws = list(recording.Reader(f, str(path)).records())
    n, size = len(raws), len(raws[0])
    batches = [b"".join(raws[i:i + args.batch]) for i in range(0, n, args.batch)]
    render = fastpath._fastpath.Renderer(0.0).render
    best_c = best_py = float("inf")
    for _ in range(args.repeat):
        t0 = time.perf_counter_ns()
        lines = [render(buf, False)[0] for buf in batches]
        best_c = min(best_c, (time.perf_counter_ns() - t0) / n)
    lines = b"".join(lines)
    assert lines.count(b"\n") == n and size == wire.RECORD_SIZE
    render = jsonl.render
    for _ in range(max(1, args.repeat // 2)):
        feed = Classifier(0.0).feed_bytes
        t0 = time.perf_counter_ns()
        out = [render(item) for raw in raws for item in feed(raw)]
        best_py = min(best_py, (time.perf_counter_ns() - t0) / n)
    assert "\n".join(out).encode() + b"\n" == lines
    print(json.dumps({"records": n, "batch": args.batch, "c_ns_per_record": round(best_c, 1),
                      "python_ns_per_record": round(best_py, 1),
                      "speedup": round(best_py / best_c, 1)}))


if __name__ == "__main__":
    main()
