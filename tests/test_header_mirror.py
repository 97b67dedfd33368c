"""bpf/tcptrace.h is the one authority for the wire format; wire.py and model.py mirror it.
This reads the header's text (no compiler, no root) and checks every constant and order they
mirror, so a change made on one side only fails here. tests/kernel/test_backends.py checks the
layout once more against what bcc compiled."""

import re
import socket
import struct

import pytest

from tcptrace_bpf import loader, wire
from tcptrace_bpf.model import OpenPath, Outcome

BPF_DIR = loader.BPF_DIR
HEADER = (BPF_DIR / "tcptrace.h").read_text()
C_SOURCE = (BPF_DIR / "tcptrace.bpf.c").read_text()


def _defines(text: str) -> dict[str, int]:
    out = {}
    for name, value in re.findall(r"^#define\s+(\w+)\s+(0x[0-9a-fA-F]+|\d+)\b", text, re.M):
        out[name] = int(value, 0)
    return out


DEFINES = _defines(HEADER)


def _group(prefix: str, exclude: tuple[str, ...] = ()) -> dict[str, int]:
    """#defines named prefix + NAME -> {NAME: value}, in the header's order."""
    return {n[len(prefix):]: v for n, v in DEFINES.items()
            if n.startswith(prefix) and n not in exclude}


def _wire_group(prefix: str, exclude: tuple[str, ...] = ()) -> dict[str, int]:
    return {n[len(prefix):]: getattr(wire, n) for n in dir(wire)
            if n.startswith(prefix) and n not in exclude and isinstance(getattr(wire, n), int)}


_SCALARS = {"__u64": "Q", "__u32": "I", "__u16": "H", "__u8": "B"}


def _struct_fields(name: str) -> list[tuple[str, str, int]]:
    """(C type, field, array length or 0) of `struct name`, in order."""
    body = re.search(r"struct %s \{(.*?)\n\};" % name, HEADER, re.S).group(1)
    body = re.sub(r"/\*.*?\*/", "", body, flags=re.S)
    fields = []
    for ctype, field, dim in re.findall(r"^\s*(\w+)\s+(\w+)(?:\[(\w+)\])?;", body, re.M):
        n = 0 if not dim else int(dim) if dim.isdigit() else DEFINES[dim]
        fields.append((ctype, field, n))
    return fields


def _format_of(fields, numeric_arrays: bool = False) -> str:
    """The struct module's format for a C struct: arrays of bytes as strings, _pad as padding
    (and, for map entries only, arrays of wider integers as counts of them)."""
    out = "<"
    for ctype, field, n in fields:
        if field.startswith("_pad"):
            out += f"{(n or 1) * struct.calcsize(_SCALARS.get(ctype, 'B'))}x"
        elif not n:
            out += _SCALARS[ctype]
        elif numeric_arrays and ctype not in ("__u8", "char"):
            out += f"{n}{_SCALARS[ctype]}"
        else:
            assert ctype in ("__u8", "char"), f"{field}: only byte arrays cross the wire"
            out += f"{n}s"
    return out


def test_versions_and_sizes():
    assert wire.WIRE_VERSION == DEFINES["TCPTRACE_WIRE_VERSION"]
    assert wire.MAX_STATES == DEFINES["TCPTRACE_MAX_STATES"]
    assert wire.COMM_LEN == DEFINES["TCPTRACE_COMM_LEN"]
    assert wire.WIRE_VERSION in wire.SUPPORTED_VERSIONS


def test_record_layout_is_the_structs_field_for_field():
    fields = _struct_fields("tcptrace_record")
    assert wire.RECORD.format == _format_of(fields)
    assert list(wire.FIELDS) == [f for _, f, _ in fields if not f.startswith("_pad")]
    # largest first, no implicit padding: the C compiler adds nothing struct would not
    assert wire.RECORD_SIZE % 8 == 0
    assert struct.calcsize(wire.RECORD.format) == struct.calcsize(wire.RECORD.format[1:])


@pytest.mark.parametrize("prefix", ["KIND_", "PROBE_", "F_"])
def test_kinds_probes_and_flags(prefix):
    """Every TT_<prefix> the header defines, and no more, with the same value in wire.py."""
    assert _wire_group(prefix) == _group("TT_" + prefix)


def test_open_flags_and_drop_reasons():
    """open_flags bits (TT_OF_*) and the listener drop reasons (TT_DROP_*), in index order."""
    bits = _group("TT_OF_")
    assert _wire_group("OF_") == bits
    assert [bits[n.upper()] for n in wire.OPEN_FLAG_NAMES] == [1 << i for i in range(len(bits))]
    assert wire.NOPENFLAGS == DEFINES["TT_NOPENFLAGS"] == len(bits)
    drops = _group("TT_DROP_")
    assert drops == _wire_group("DROP_")
    assert wire.NDROPS == DEFINES["TT_NDROPS"] == len(wire.DROP_REASONS) == len(drops)
    by_index = sorted(drops, key=drops.get)
    # the metric's reason label: the queue's name and "_full", or "other"
    assert list(wire.DROP_REASONS) == [n.lower() + ("" if n == "OTHER" else "_full")
                                       for n in by_index]


def test_listener_structs_are_what_the_loader_reads():
    """The collector reads the listener maps' entries by wire's layouts; each is the header's
    struct field for field, and every counter of struct tcptrace_listen_counts is one the
    collector names."""
    counts = [f for _, f, _ in _struct_fields("tcptrace_listen_counts")]
    assert counts == ["drops", "syncookies_sent", "synack_retransmits", "passive_opens"]
    assert wire.MAP_LAYOUTS["tcptrace_listen_counts"][1] == tuple(counts)
    for name in ("tcptrace_listen_counts", "tcptrace_listener_key", "tcptrace_owner"):
        fields = _struct_fields(name)
        layout, names = wire.MAP_LAYOUTS[name]
        assert layout.format == _format_of(fields, numeric_arrays=True)
        assert list(names) == [f for _, f, _ in fields if not f.startswith("_pad")]
    # struct tcptrace_listener begins with a struct tcptrace_listen_counts (`c`), which the
    # field parser skips: the rest follows it
    rest = _struct_fields("tcptrace_listener")
    assert wire.LISTENER.format == (f"<{wire.LISTEN_COUNTS.size}s" + _format_of(rest)[1:])
    assert list(wire.LISTENER_FIELDS) == ["c"] + [f for _, f, _ in rest if not f.startswith("_pad")]
    assert "struct tcptrace_listen_counts c;" in HEADER


def test_every_probe_has_a_name():
    assert set(wire.PROBE_NAMES) == set(_group("TT_PROBE_").values())
    for name, value in _group("TT_PROBE_").items():
        assert wire.PROBE_NAMES[value] == name.lower()


def test_kernel_loss_counters_in_stat_order():
    stats = _group("TT_STAT_", exclude=("TT_STAT_MAX",))
    assert sorted(stats.values()) == list(range(DEFINES["TT_STAT_MAX"]))
    assert wire.STAT_NAMES == tuple(n.lower() for n, _ in sorted(stats.items(), key=lambda s: s[1]))


@pytest.mark.parametrize("prefix,count,enum,agg", [
    ("TT_PATH_", "TT_NPATHS", OpenPath, "AGG_PATHS"),
    ("TT_OUT_", "TT_NOUTCOMES", Outcome, "AGG_OUTCOMES"),
])
def test_export_index_orders_are_the_enums(prefix, count, enum, agg):
    """Member i of the enum is the kernel's index i; wire's orders are the enum's."""
    index = _group(prefix)
    assert len(enum) == DEFINES[count] == len(index)
    assert [m.name for m in enum] == sorted(index, key=index.get)
    assert sorted(index.values()) == list(range(len(enum)))
    assert getattr(wire, agg) == tuple(m.value for m in enum)


def test_export_families():
    assert len(wire.AGG_FAMILIES) == DEFINES["TT_NFAMILIES"]
    assert wire.AGG_FAMILIES[0] == 4  # the C indexes by family == AF_INET6
    assert (wire.AF_INET, wire.AF_INET6) == (socket.AF_INET, socket.AF_INET6)


def test_the_c_reads_only_offsets_the_loader_gives():
    """The loader passes every OFF_* (from BTF, or offsetof() against the headers): the C
    keeps no list of its own, and every listed offset is read."""
    listed = set(loader.OFFSETS) | set(loader.OPTIONAL_OFFSETS)
    used = set(re.findall(r"\bOFF_\w+", C_SOURCE))
    assert used == listed
    defined = set(re.findall(r"^#define\s+(OFF_\w+)", C_SOURCE, re.M))
    assert defined <= set(loader.OPTIONAL_OFFSETS)  # only "absent on this kernel" defaults


def test_without_btf_the_offsets_are_the_headers_offsetof(tmp_path):
    """...which needs the headers' structs: the C includes them only then (with BTF, only
    constants: parsing net/tcp.h was most of the compile)."""
    flags, source = loader.offset_cflags(tmp_path / "no-btf")
    assert source == "kernel headers (no BTF)"
    assert "#ifdef TT_STRUCTS_FROM_HEADERS" in C_SOURCE
    assert flags == ["-DTT_STRUCTS_FROM_HEADERS"] + [f"-D{name}=offsetof(struct {s}, {m})"
                     for name, (s, m) in loader.OFFSETS.items()] + [
                     f"-D{name}={m}" for name, (_, m) in loader.ENUMS.items()]
