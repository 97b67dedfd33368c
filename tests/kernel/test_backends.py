"""Backends and the wire format against the running kernel: what loads, what bcc compiled."""

import ctypes
import subprocess

import pytest

from tcptrace_bpf import loader, wire
from tcptrace_bpf.btf import BTF, BTFError

from tests.background import ROOT, TOOL

from .conftest import kernel_ready


@pytest.fixture(scope="module")
def tracepoint_tracer():
    kernel_ready()
    with loader.BpfPrograms.start("tracepoint") as t:
        yield t


def test_wire_mirror_matches_what_bcc_compiled(tracepoint_tracer):
    cls = tracepoint_tracer.compiled_record_type()
    assert ctypes.sizeof(cls) == wire.RECORD_SIZE
    offsets = wire.field_offsets()
    c_fields = [name for name, *_ in cls._fields_ if not name.startswith("_")]
    assert c_fields == list(wire.FIELDS)
    for name in wire.FIELDS:
        assert getattr(cls, name).offset == offsets[name], name


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
