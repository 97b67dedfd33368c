"""Struct member offsets read from the running kernel's BTF (/sys/kernel/btf/vmlinux).

Kernel headers that do not exactly match the running kernel put fields of struct sock,
inet_sock, inet_connection_sock and tcp_sock at the wrong offsets; BTF describes the kernel
that is actually running. The format is Documentation/bpf/btf.rst: a header, a type section
of variable-length records, and a string section. Only what offset lookups need is parsed.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

VMLINUX_BTF = Path("/sys/kernel/btf/vmlinux")

BTF_MAGIC = 0xEB9F
# kinds (btf.rst "2.2 Type encoding")
_INT, _PTR, _ARRAY, _STRUCT, _UNION, _ENUM, _FWD, _TYPEDEF = 1, 2, 3, 4, 5, 6, 7, 8
_VOLATILE, _CONST, _RESTRICT, _FUNC, _FUNC_PROTO, _VAR, _DATASEC = 9, 10, 11, 12, 13, 14, 15
_FLOAT, _DECL_TAG, _TYPE_TAG, _ENUM64 = 16, 17, 18, 19
_MODIFIERS = (_TYPEDEF, _VOLATILE, _CONST, _RESTRICT, _TYPE_TAG)
# bytes that follow the 12-byte common header: fixed part, and per-vlen part
_EXTRA = {_INT: (4, 0), _ARRAY: (12, 0), _STRUCT: (0, 12), _UNION: (0, 12), _ENUM: (0, 8),
          _FUNC_PROTO: (0, 8), _VAR: (4, 0), _DATASEC: (0, 12), _DECL_TAG: (4, 0),
          _ENUM64: (0, 12)}


class BTFError(Exception):
    """BTF is missing, malformed, or lacks a requested struct or member."""


@dataclass(frozen=True)
class _Type:
    kind: int
    name: str
    size_or_type: int
    kind_flag: bool
    pos: int  # byte position of the record inside the type section
    vlen: int


class BTF:
    def __init__(self, data: bytes):
        if len(data) < 24:
            raise BTFError("BTF blob too short")
        magic, _version, _flags, hdr_len = struct.unpack_from("<HBBI", data, 0)
        if magic != BTF_MAGIC:
            raise BTFError(f"bad BTF magic {magic:#x}")
        type_off, type_len, str_off, str_len = struct.unpack_from("<4I", data, 8)
        self._types_blob = data[hdr_len + type_off: hdr_len + type_off + type_len]
        self._strings = data[hdr_len + str_off: hdr_len + str_off + str_len]
        self._types: list[_Type | None] = [None]  # type id 0 is void
        self._by_name: dict[str, int] = {}
        self._enums: dict[str, int] = {}
        self._funcs: dict[str, int] = {}
        self._index()

    @classmethod
    def from_file(cls, path: Path = VMLINUX_BTF) -> "BTF":
        try:
            return cls(Path(path).read_bytes())
        except OSError as exc:
            raise BTFError(f"cannot read {path}: {exc.strerror}") from exc

    def _str(self, off: int) -> str:
        end = self._strings.index(b"\0", off)
        return self._strings[off:end].decode()

    def _index(self) -> None:
        blob, pos, n = self._types_blob, 0, len(self._types_blob)
        while pos < n:
            name_off, info, size_or_type = struct.unpack_from("<3I", blob, pos)
            kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
            t = _Type(kind, self._str(name_off) if name_off else "", size_or_type,
                      bool(info >> 31), pos, vlen)
            tid = len(self._types)
            self._types.append(t)
            if kind in (_STRUCT, _UNION) and t.name and t.name not in self._by_name:
                self._by_name[t.name] = tid
            if kind == _ENUM and t.name and t.name not in self._enums:
                self._enums[t.name] = tid
            if kind == _FUNC and t.name and t.name not in self._funcs:
                self._funcs[t.name] = tid
            fixed, per = _EXTRA.get(kind, (0, 0))
            pos += 12 + fixed + per * vlen

    def _resolve(self, tid: int) -> int:
        while self._types[tid] is not None and self._types[tid].kind in _MODIFIERS:
            tid = self._types[tid].size_or_type
        return tid

    def _members(self, tid: int):
        t = self._types[tid]
        for i in range(t.vlen):
            name_off, mtype, off = struct.unpack_from("<3I", self._types_blob, t.pos + 12 + 12 * i)
            bits = (off & 0xFFFFFF) if t.kind_flag else off
            bitfield = (off >> 24) if t.kind_flag else 0
            yield (self._str(name_off) if name_off else ""), mtype, bits, bitfield

    def _find_member(self, tid: int, name: str):
        """(bit offset, type id, bitfield size) of `name`, searching anonymous members too."""
        for mname, mtype, bits, bitfield in self._members(tid):
            if mname == name:
                return bits, mtype, bitfield
            if not mname:
                inner = self._resolve(mtype)
                if self._types[inner].kind in (_STRUCT, _UNION):
                    found = self._find_member(inner, name)
                    if found:
                        return bits + found[0], found[1], found[2]
        return None

    def struct_id(self, name: str) -> int:
        try:
            return self._by_name[name]
        except KeyError:
            raise BTFError(f"struct {name} not in BTF") from None

    def offsetof(self, struct_name: str, path: str) -> int:
        """Byte offset of a (dotted) member path, e.g. ("sock", "__sk_common.skc_state")."""
        tid, total = self.struct_id(struct_name), 0
        for part in path.split("."):
            found = self._find_member(tid, part)
            if found is None:
                raise BTFError(f"{struct_name} has no member {path}")
            bits, mtype, bitfield = found
            if bitfield or bits % 8:
                raise BTFError(f"{struct_name}.{path} is a bit-field")
            total += bits // 8
            tid = self._resolve(mtype)
        return total

    def enum_value(self, enum_name: str, member: str) -> int:
        """A named constant of an enum, e.g. ("skb_drop_reason", "SKB_DROP_REASON_NO_SOCKET"):
        the numbers move between kernel versions."""
        try:
            t = self._types[self._enums[enum_name]]
        except KeyError:
            raise BTFError(f"enum {enum_name} not in BTF") from None
        for i in range(t.vlen):
            name_off, value = struct.unpack_from("<Ii", self._types_blob, t.pos + 12 + 8 * i)
            if self._str(name_off) == member:
                return value
        raise BTFError(f"enum {enum_name} has no {member}")

    def func_id(self, name: str) -> int:
        """The type id of a kernel function (what an fentry program is loaded against)."""
        try:
            return self._funcs[name]
        except KeyError:
            raise BTFError(f"function {name} not in BTF") from None

    def sizeof(self, struct_name: str) -> int:
        return self._types[self.struct_id(struct_name)].size_or_type
