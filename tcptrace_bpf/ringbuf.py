"""A BPF ring buffer read straight from its memory map, in batches.

Why not bcc's ring_buffer_consume: it calls back into Python through ctypes once per record.
Here one loop walks every committed record between the consumer and producer positions and
hands each to the callback as bytes; the programs send no wakeups (BPF_RB_NO_WAKEUP), so the
collector drains on its own clock. Layout (kernel/bpf/ringbuf.c, as libbpf maps it): page 0,
read-write, holds consumer_pos; from page 1, read-only, producer_pos then the data area,
mapped twice in a row so that a record crossing the end is contiguous. Each record is an
8-byte header (u32 length with BUSY and DISCARD bits, u32 page offset), then the data,
padded to 8 bytes.

Plain loads from the map are enough on x86-64, whose loads are not reordered with each other
(the kernel commits a record by clearing BUSY with release semantics); on other CPUs the
loader uses LibbpfRing: libbpf's own consumer, which has the barriers (it is what bcc's
ring_buffer_consume calls), through ctypes, so that no bcc (and its LLVM) is in the process."""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
import struct
from typing import Callable, Optional

_BUSY, _DISCARD = 1 << 31, 1 << 30
_HDR = 8
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")


class RingReader:
    def __init__(self, map_fd: int, size: int, on_record: Callable[[bytes], None],
                 on_batch: Optional[Callable[["RingReader"], int]] = None):
        """on_batch, if given, drains instead of the loop below (fastpath.Batches.drain: the
        same walk in C, from cons_map, prod_map and data_offset)."""
        if size & (size - 1):
            raise ValueError(f"ring buffer size {size} is not a power of 2")
        page = mmap.PAGESIZE
        self.mask = size - 1
        self.on_record = on_record
        self.on_batch = on_batch
        self.data_offset = page
        self._cons = mmap.mmap(map_fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE,
                               offset=0)
        self._prod = mmap.mmap(map_fd, page + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ,
                               offset=page)
        self._data = memoryview(self._prod)[page:]
        self.cons_map, self.prod_map = self._cons, self._prod

    def drain(self) -> int:
        """Hand over every committed record; return how many."""
        if self.on_batch is not None:
            return self.on_batch(self)
        data, mask, on_record = self._data, self.mask, self.on_record
        cons, n = _U64.unpack_from(self._cons, 0)[0], 0
        while True:
            prod = _U64.unpack_from(self._prod, 0)[0]
            if cons >= prod:
                return n
            busy = False
            while cons < prod:
                off = cons & mask
                head = _U32.unpack_from(data, off)[0]
                if head & _BUSY:  # reserved, not yet committed: the next drain takes it
                    busy = True
                    break
                length = head & ~(_BUSY | _DISCARD)
                if not head & _DISCARD:
                    on_record(bytes(data[off + _HDR:off + _HDR + length]))
                    n += 1
                cons += (length + _HDR + 7) & ~7
            _U64.pack_into(self._cons, 0, cons)  # frees the space for the producers
            if busy:
                return n

    def close(self) -> None:
        self._data.release()
        self._prod.close()
        self._cons.close()


class LibbpfRing:
    """The same interface over libbpf's ring_buffer__consume(): one call back into Python per
    record, with the memory barriers every CPU needs."""

    _SAMPLE = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)

    def __init__(self, map_fd: int, size: int, on_record: Callable[[bytes], None]):
        try:  # libbcc's own dependency, wherever bcc is installed
            lib = ctypes.CDLL("libbpf.so.1", use_errno=True)
        except OSError:
            lib = ctypes.CDLL(ctypes.util.find_library("bpf") or "libbpf.so", use_errno=True)
        self._lib = lib
        lib.ring_buffer__new.restype = ctypes.c_void_p
        lib.ring_buffer__new.argtypes = [ctypes.c_int, self._SAMPLE, ctypes.c_void_p,
                                         ctypes.c_void_p]
        lib.ring_buffer__consume.restype = ctypes.c_int
        lib.ring_buffer__consume.argtypes = [ctypes.c_void_p]
        lib.ring_buffer__free.restype = None
        lib.ring_buffer__free.argtypes = [ctypes.c_void_p]

        def sample(_ctx, data, length) -> int:
            on_record(ctypes.string_at(data, length))
            return 0
        self._sample = self._SAMPLE(sample)  # referenced here: libbpf holds only a C pointer
        self._rb = lib.ring_buffer__new(map_fd, self._sample, None, None)
        if not self._rb:
            err = ctypes.get_errno()
            raise OSError(err, f"libbpf ring_buffer__new: {os.strerror(err)}")

    def drain(self) -> int:
        n = self._lib.ring_buffer__consume(self._rb)
        if n < 0:
            raise OSError(-n, f"libbpf ring_buffer__consume: {os.strerror(-n)}")
        return n

    def close(self) -> None:
        if self._rb:
            self._lib.ring_buffer__free(self._rb)
            self._rb = None
