"""Backends and the wire format against the running kernel: what loads, what bcc compiled;
and the resident process that holds the programs without bcc."""

import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tcptrace_bpf import bpfsys, loader, wire
from tcptrace_bpf.btf import BTF, BTFError

from tests.background import ROOT, TOOL
from tests.conftest import require

from .conftest import kernel_ready


@pytest.fixture(scope="module")
def tracepoint_tracer():
    kernel_ready()
    with loader.BpfPrograms.start("tracepoint") as t:
        yield t


@pytest.mark.parametrize("struct_name", list(wire.MAP_LAYOUTS))
def test_wire_mirror_matches_what_bcc_compiled(tracepoint_tracer, struct_name):
    """The ring-buffer record and every map entry the collector decodes, field for field as
    bcc compiled bpf/tcptrace.h (the loading process reports what it compiled)."""
    size, fields = tracepoint_tracer.layouts[struct_name]
    layout, names = wire.MAP_LAYOUTS[struct_name]
    assert size == layout.size
    offsets = wire.field_offsets(struct_name)
    assert [n for n, *_ in fields if not n.startswith("_")] == list(names)
    for name, offset, _ in fields:
        if not name.startswith("_"):
            assert offset == offsets[name], name


def test_map_shapes_are_what_wire_decodes(tracepoint_tracer):
    """The kernel's own word on the maps the resident process reads (BPF_OBJ_GET_INFO_BY_FD)."""
    maps = tracepoint_tracer.maps
    assert maps["opens"].value_size == wire.RECORD_SIZE and maps["opens"].key_size == 8
    assert maps["listen_socks"].value_size == wire.LISTENER.size
    assert maps["listen_ports"].value_size == wire.LISTEN_COUNTS.size
    assert maps["listeners"].key_size == wire.LISTENER_KEY.size
    assert maps["listeners"].value_size == wire.OWNER.size
    assert maps["stats"].percpu and maps["stats"].max_entries == len(wire.STAT_NAMES)
    assert tracepoint_tracer.ring_size == loader.Settings().ringbuf_pages * os.sysconf("SC_PAGESIZE")


def test_batched_and_key_by_key_reads_agree(tracepoint_tracer):
    with socket.socket() as srv:  # at least one listener in listen_socks
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        socket.create_connection(srv.getsockname()).close()
        table = tracepoint_tracer.maps["listen_socks"]
        batched = dict(table.items())
        slow = bpfsys.Map(os.dup(table.fd))
        slow._batch = False
        try:
            by_key = dict(slow.items())
        finally:
            slow.close()
    assert batched and set(batched) == set(by_key)


RESIDENT = r"""
import json, socket, sys, time
from tcptrace_bpf import loader, ringbuf, wire
consumer = getattr(ringbuf, sys.argv[1])
with loader.BpfPrograms.start("tracepoint") as t:
    bcc = sorted(m for m in sys.modules if m == "bcc" or m.startswith("bcc."))
    with open("/proc/self/maps") as f:
        llvm = sorted({l.split()[-1] for l in f if "LLVM" in l or "libbcc" in l or "clang" in l})
    ports = []
    t.open_ring(lambda buf: ports.append(wire.decode(buf).sport), consumer)
    srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen()
    c = socket.create_connection(srv.getsockname()); a, _ = srv.accept()
    mine = c.getsockname()[1]
    c.close(); a.close(); srv.close()
    deadline = time.monotonic() + 5
    while mine not in ports and time.monotonic() < deadline:
        t.poll(100)
    print(json.dumps({"bcc": bcc, "llvm": llvm, "seen": mine in ports}))
"""


@pytest.mark.parametrize("consumer", ["RingReader", "LibbpfRing"])
def test_the_resident_process_traces_without_bcc(consumer):
    """After start, the process that traces has no bcc module and no LLVM mapped; the
    programs the loading process attached (and which exited since) still deliver records,
    through either ring-buffer consumer."""
    kernel_ready()
    out = subprocess.run([sys.executable, "-c", RESIDENT, consumer], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got == {"bcc": [], "llvm": [], "seen": True}


def test_fentry_trial_is_cheap():
    """The fentry trial loads two instructions, not the compiled programs: here (fentry
    refused) it answers in well under a second, in libbpf's words."""
    kernel_ready()
    t0 = time.monotonic()
    why = loader._fentry_refused()
    assert time.monotonic() - t0 < 2.0  # BTF parse included
    assert why is None or why.startswith(("Failed to load program: ", "Failed to attach program: "))


def test_loading_errors_arrive_as_the_same_loader_error(tmp_path):
    """No headers: the loading process's LoaderError is the resident process's, word for
    word, and no traceback (the CLI then prints its one line)."""
    kernel_ready()
    build = Path("/lib/modules") / platform.release() / "build"
    require(not (build / "include").is_dir(), "the kernel's own headers are installed here")
    out = subprocess.run(
        [sys.executable, "-c", "from tcptrace_bpf import loader\n"
         "try:\n    loader.BpfPrograms.start('tracepoint')\n"
         "except loader.LoaderError as e:\n    print(type(e).__name__, e)"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "TCPTRACE_HEADERS_ROOT": str(tmp_path), "BCC_KERNEL_SOURCE": ""})
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    assert out.stdout == (f"LoaderError no kernel headers for {platform.release()}: run "
                          "`make setup` (scripts/kernel-headers.sh prepares them)\n")


def test_offsets_come_from_btf():
    kernel_ready()
    flags, source = loader.offset_cflags()
    assert source == "BTF"
    btf = BTF.from_file()
    given = dict(f[2:].split("=") for f in flags)
    assert set(loader.OFFSETS) <= set(given)
    for name, (struct, member) in loader.OFFSETS.items():
        assert int(given[name]) == btf.offsetof(struct, member)
    # fields whose place never moved; a parser bug would move them
    assert btf.offsetof("sock_common", "skc_family") == 16
    assert btf.offsetof("sock", "__sk_common.skc_state") == 18
    with pytest.raises(BTFError):
        btf.offsetof("sock", "no_such_member")


def test_kprobe_programs_compile_and_pass_the_verifier():
    kernel_ready()
    assert loader.verify_kprobe_programs() == list(loader.KPROBES.values())


def test_fentry_programs_compile():
    """Here the kernel refuses fentry loads (EPERM); the C must still compile, so the only
    acceptable failure is at load, never at compile."""
    kernel_ready()
    bcc = loader.import_bcc()
    loader.kernel_headers()
    offsets, _ = loader.offset_cflags()
    flags = loader.cflags(loader.Backend.FENTRY, loader.Settings(), offsets)
    try:
        bpf = bcc.BPF(src_file=str(loader.BPF_SOURCE).encode(), cflags=flags)
    except Exception as exc:
        assert "compile" not in str(exc).lower(), exc
    else:
        bpf.cleanup()


def test_auto_chooses_by_trial_load_and_says_why():
    kernel_ready()
    with loader.BpfPrograms.start("auto") as t:
        caps = t.caps
    assert caps.backend is loader.Backend.TRACEPOINT
    text = caps.describe()
    assert text.startswith("backend tracepoint (fentry: ")
    assert "kprobe: kernel has no kprobes" in text and "tracepoint: loaded" in text


def test_forcing_a_backend_the_kernel_refuses_is_one_line_exit_1():
    kernel_ready()
    out = subprocess.run(TOOL + ["trace", "--attach", "kprobe", "--duration", "1"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert lines == ["tcptrace-bpf: error: no backend could attach: "
                     "kprobe: kernel has no kprobes (CONFIG_KPROBES unset)"]
