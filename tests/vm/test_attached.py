"""In the VM: the session tracer runs the backend it was asked for (auto: fentry, which this
kernel allows), and its programs are really attached to the kernel functions."""

import platform
from pathlib import Path

from tcptrace_bpf import loader
from tests.kernel.conftest import ATTACH

BPF_PROG_TYPE_KPROBE, BPF_PROG_TYPE_TRACING = 2, 26


def _prog_types(pid: int) -> list[int]:
    """prog_type of every BPF program the tracer process holds an fd of."""
    types = []
    for info in Path(f"/proc/{pid}/fdinfo").iterdir():
        try:
            fields = dict(line.split(":", 1) for line in info.read_text().splitlines() if ":" in line)
        except OSError:
            continue
        if "prog_type" in fields and "prog_tag" in fields:
            types.append(int(fields["prog_type"]))
    return types


def test_a_distro_kernel_with_matching_headers_kprobes_and_btf():
    release = platform.release()
    assert Path(f"/lib/modules/{release}/build/include").is_dir()
    assert loader.kernel_headers() == f"/lib/modules/{release}/build"
    assert Path("/sys/bus/event_source/devices/kprobe").exists()
    assert Path("/sys/kernel/btf/vmlinux").exists()


def test_backend_is_the_one_asked_for(tracer):
    if ATTACH == "auto":
        assert tracer.backend == "fentry", tracer.announce
        assert tracer.announce.startswith("backend fentry (fentry: loaded)"), tracer.announce
    else:
        assert tracer.backend == ATTACH, tracer.announce
        assert tracer.announce.startswith(f"backend {ATTACH} (forced)"), tracer.announce
    assert "struct offsets from BTF" in tracer.announce


def test_programs_are_attached_to_the_kernel_functions(tracer):
    types = _prog_types(tracer.proc.pid)
    hooks = set(loader.KPROBES)  # tcp_set_state, tcp_rcv_state_process, tcp_send_synack
    if tracer.backend == "kprobe":
        assert types.count(BPF_PROG_TYPE_KPROBE) >= len(hooks), types
        listed = Path("/sys/kernel/debug/kprobes/list").read_text()
        assert all(f" {fn}+0x" in listed for fn in hooks), listed  # +0x4 past endbr64 with IBT
    else:
        assert tracer.backend == "fentry"
        assert types.count(BPF_PROG_TYPE_TRACING) >= len(hooks), types
