"""Address space for one launch's staged buffers: each buffer's pages lie between PROT_NONE
guard regions that no 32-bit index can cross, so an out-of-bounds access at any such distance
faults (and the fault becomes a KernelError naming the argument) instead of touching memory.

A kernel indexes a buffer with a 32-bit int or uint, of elements of at most 16 bytes in the
common case (float4, int4, long2; a struct buffer's element may be larger, and the reach grows
with it up to 64 bytes): from the buffer, a byte offset lies in [-2^31, 2^32) elements, 32 GiB
before and 64 GiB after it for 16-byte elements. The guards are reserved with
mmap(PROT_NONE, MAP_NORESERVE), which costs address space only (x86-64 has 128 TiB of it):
no memory, no commit charge, no page tables, and no cost per access (checked accesses are the
instrumented mode's business). One reservation holds every buffer of a launch, each [guard
before][pages][guard after]: 2n + 1 mappings for n buffers (vm.max_map_count is about 65000).
Making one costs a few hundred microseconds (mostly unmapping it), which thousands of small
launches would feel, so the process keeps the last few small ones (`reserve`), keyed by their
buffers' page counts rounded up to powers of two, and lends them to one launch at a time, in any
thread. (Not one pool per thread: a thread-local pool is freed while Python tears down a foreign
thread's state, where unmapping from Python crashes.) A 64-bit offset beyond the reach may still
land elsewhere in the process.
"""

from __future__ import annotations

import ctypes
import mmap
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from .stacks import _MAP_FAILED, PAGE, PROT_NONE, _libc

MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000)
INDEX_ELEMENTS_BEFORE = 2**31  # int: down to -2^31
INDEX_ELEMENTS_AFTER = 2**32  # uint: up to 2^32 - 1
MIN_ELEMENT = 16  # float4, long2: the widest vector element of the common types
MAX_ELEMENT = 64  # a larger struct element is covered as far as 2^32 of 64 bytes
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.munmap.restype = ctypes.c_int
_warned = False
KEEP = 8  # reservations the process keeps for reuse
KEEP_MAX_BYTES = 4 << 20  # the most pages (all buffers together) of one kept reservation
KEEP_TOTAL_BYTES = 16 << 20  # and of all it keeps


def _round_up(n: int, to: int) -> int:
    return -(-n // to) * to


class Reservation:
    """Pages for each of `sizes` (bytes), each between guards reaching 2^31 elements before and
    2^32 after, for elements of `element` bytes; `starts[i]` is where buffer i's pages begin."""

    def __init__(self, pages: list[int], element: int = MIN_ELEMENT):
        if any(n < PAGE or n % PAGE for n in pages):
            raise ValueError(f"buffer pages must be positive multiples of {PAGE} bytes, got {pages}")
        self.pages = list(pages)
        self.before, self.after = INDEX_ELEMENTS_BEFORE * element, INDEX_ELEMENTS_AFTER * element
        self.base = None
        while True:
            self.total = sum(self.before + p + self.after for p in self.pages)
            flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_NORESERVE
            base = _libc.mmap(None, self.total, PROT_NONE, flags, -1, 0)
            if base not in (None, _MAP_FAILED):
                break
            if self.after <= 1 << 24:
                raise MemoryError(f"cannot reserve address space for the launch's buffers "
                                  f"(errno {ctypes.get_errno()}; is `ulimit -v` set?)")
            self._shrink()
        self.base = base
        self.starts = []
        at = base
        for p in self.pages:
            at += self.before
            if _libc.mprotect(at, p, mmap.PROT_READ | mmap.PROT_WRITE) != 0:
                self.close()
                raise MemoryError(f"cannot map a staging buffer of {p} bytes (errno {ctypes.get_errno()})")
            self.starts.append(at)
            at += p + self.after
        # Byte views of each buffer's pages, made once (a view costs more than a small launch's copy).
        self.views = [torch.frombuffer((ctypes.c_ubyte * p).from_address(a), dtype=torch.uint8)
                      for a, p in zip(self.starts, self.pages, strict=True)]

    def _shrink(self) -> None:
        """Less address space than the guards want (a `ulimit -v`): smaller guards, said once."""
        global _warned
        self.before //= 16
        self.after //= 16
        if not _warned:
            _warned = True
            warnings.warn("the emulator could not reserve its full guard regions (is `ulimit -v` set?); "
                          "out-of-bounds accesses far from a buffer may go unreported", RuntimeWarning,
                          stacklevel=4)

    def locate(self, address: int) -> tuple[int, int] | None:
        """(i, offset of `address` from buffer i's first page) if it is in buffer i's guards or pages."""
        if self.base is None or not self.base <= address < self.base + self.total:
            return None
        at = self.base
        for i, p in enumerate(self.pages):
            if address < at + self.before + p + self.after:
                return i, address - (at + self.before)
            at += self.before + p + self.after
        return None

    def close(self) -> None:
        if self.base is not None:
            self.views = []
            _libc.munmap(self.base, self.total)
            self.base = None


def page_layout(sizes: list[int], element: int) -> tuple[int, tuple[int, ...]]:
    """The reservation that fits buffers of `sizes` bytes: (element, pages of each). Small buffers'
    pages are rounded up to a power of two, so launches of similar shapes share reservations."""
    if any(n < 0 for n in sizes):
        raise ValueError(f"buffer sizes must be non-negative, got {sizes}")
    element = min(max(element, MIN_ELEMENT), MAX_ELEMENT)
    pages = []
    for n in sizes:
        p = max(PAGE, _round_up(n, PAGE))
        if p <= KEEP_MAX_BYTES:
            p = PAGE << (p // PAGE - 1).bit_length()
        pages.append(p)
    return element, tuple(pages)


_kept: list[tuple[tuple[int, tuple[int, ...]], Reservation]] = []  # (layout, free reservation), oldest first
_lock = threading.Lock()


@contextmanager
def reserve(sizes: list[int], element: int = MIN_ELEMENT) -> Iterator[Reservation]:
    """A reservation for buffers of `sizes` bytes with guards for `element`-byte elements, for the
    duration of the block: a kept one no other launch holds, or a new one, kept afterwards if small."""
    layout = page_layout(sizes, element)
    with _lock:
        k = next((k for k, (key, _) in enumerate(_kept) if key == layout), None)
        memory = _kept.pop(k)[1] if k is not None else None
    if memory is None:
        memory = Reservation(list(layout[1]), layout[0])
    try:
        yield memory
    finally:
        evicted = [memory] if sum(memory.pages) > KEEP_MAX_BYTES else []
        if not evicted:
            with _lock:
                _kept.append((layout, memory))
                while len(_kept) > KEEP or sum(sum(m.pages) for _, m in _kept) > KEEP_TOTAL_BYTES:
                    evicted.append(_kept.pop(0)[1])
        for m in evicted:
            m.close()
