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
loader keeps bcc's consumer, which has the barriers."""

from __future__ import annotations

import mmap
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
