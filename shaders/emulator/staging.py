"""Staging of a launch's buffers: each storage the arguments touch is copied into pages of its
own between guard regions (reservation.py), the kernel runs on the copies, and the results go
back only after a clean run.

Two layers catch out-of-bounds accesses, both free per access (checked accesses, which see every
one, are the instrumented mode's):
- guard pages: any access by a 32-bit index outside the buffer's pages faults, and is reported
  with the argument, the element index and whether it read or wrote; no memory outside the
  buffers is touched;
- poisoned slack: the bytes of those pages no argument covers (the head before the buffer, the
  gaps between views of one storage, and a tail of under 64 bytes) are poisoned, so writing them
  is reported after the run, and reading them gives the poison. The copy keeps the original's
  offset from a 64-byte boundary (a misaligned view stays misaligned), which is all that keeps
  its end from abutting the guard.
The two schedules poison with different bytes (POISONS: NaN / -1 in every width, then a finite
value in every width), so a kernel that copies or computes from bytes outside its buffers, or
never written, leaves different results in the two runs, and their comparison reports it. The
results are compared byte for byte, except where atomic read-modify-writes landed in a float
buffer, which may differ by rounding.
"""

from __future__ import annotations

import ctypes

import torch

from .abi import POISON

ALIGN = 64
# The staged slack's poison in the first and in the second schedule: 0xFF is NaN (a quiet one,
# which arithmetic keeps) in every float width and -1 in every int; 0xA5 is a finite, nonzero
# value in each (float -2.9e-16, half -0.022, bfloat -2.9e-16, int8 -91), so arithmetic changes it.
POISONS = (POISON, 0xA5)
# How far apart two schedules may leave a float that atomic adds accumulated (relative to
# the larger magnitude): the order of the additions changes their rounding, nothing else.
ATOMIC_RTOL = {torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}


def extent(t: torch.Tensor) -> int:
    """Bytes from a tensor's first element to the end of its last one (its strides included)."""
    if t.numel() == 0:
        return 0
    return (sum((n - 1) * st for n, st in zip(t.shape, t.stride(), strict=True)) + 1) * t.element_size()


def only_atomic_rounding(a: torch.Tensor, b: torch.Tensor, base: int, dtype, ranges) -> bool:
    """Whether two schedules' bytes of one float argument differ only where atomic
    read-modify-writes landed, and there only by rounding: within the bound the runtime kept
    for each range (operations x largest magnitude x the dtype's epsilon, for atomic float
    adds), or within ATOMIC_RTOL of the value (for adds done with integer compare-exchange)."""
    if dtype not in ATOMIC_RTOL or not ranges:
        return False
    size = torch.empty((), dtype=dtype).element_size()
    eps = torch.finfo(dtype).eps
    x, y = a.clone().view(dtype).double(), b.clone().view(dtype).double()
    differ = (x != y) & ~(x.isnan() & y.isnan())
    for k in differ.nonzero().flatten().tolist():
        addr = base + k * size
        hit = next((r for r in ranges if r[0] <= addr and addr + size <= r[1]), None)
        if hit is None:
            return False
        gap = abs(x[k].item() - y[k].item())
        if gap > max(ATOMIC_RTOL[dtype] * max(abs(x[k].item()), abs(y[k].item())), 2 * eps * hit[2]):
            return False
    return True


class Staged:
    """A staging copy of the bytes the arguments cover in one storage (or of one scalar
    argument), ending as near its pages' end as its alignment allows, the rest poisoned.
    `place` gives it its pages."""

    def __init__(self, lo: int, length: int, payload: bytes | None = None):
        self.lo = lo  # address of the user's first covered byte; unused for scalars
        self.length = length
        self.payload = payload
        # The copy sits at the same offset from a 64-byte boundary as the original,
        # so a misaligned view stays misaligned for the kernel.
        self.residue = lo % ALIGN if payload is None else 0
        self.extents: list[tuple[int, int]] = []  # (offset from lo, length)
        self._gaps: list[tuple[int, int]] | None = None
        self.buf: torch.Tensor | None = None
        self.start = self.size = self.head = self.addr = 0
        if payload is not None:
            self.cover(0, length)

    @property
    def page_bytes(self) -> int:
        """Bytes of pages the copy needs: its length and room to keep its alignment."""
        return self.length + ALIGN - 1

    def place(self, start: int, pages: torch.Tensor) -> None:
        """Puts the copy in the pages at `start` (page-aligned; `pages` views their bytes), its end as
        near theirs as its offset from a 64-byte boundary allows (under 64 bytes short)."""
        self.start, self.size = start, len(pages)
        self.head = (self.size - self.length - self.residue) // ALIGN * ALIGN + self.residue
        self.buf = pages
        self.addr = start + self.head
        self._gaps = None

    def cover(self, offset: int, length: int) -> None:
        self.extents.append((offset, length))
        self._gaps = None

    @property
    def gaps(self) -> list[tuple[int, int]]:
        """Slices of the pages no argument covers, as (start, stop) into buf."""
        if self._gaps is None:
            gaps, at = [], 0
            for off, n in sorted(self.extents):
                if self.head + off > at:
                    gaps.append((at, self.head + off))
                at = max(at, self.head + off + n)
            if at < self.size:
                gaps.append((at, self.size))
            self._gaps = gaps
        return self._gaps

    def refill(self, poison: int = POISON) -> None:
        for a, b in self.gaps:
            ctypes.memset(self.start + a, poison, b - a)
        for off, n in self.extents:
            src = self.payload if self.payload is not None else self.lo + off
            ctypes.memmove(self.addr + off, src, n)

    def first_stray_write(self, poison: int = POISON) -> int | None:
        """Offset from lo of the first written byte that no argument covers, if any."""
        fill = bytes([poison])
        for a, b in self.gaps:
            data = ctypes.string_at(self.start + a, b - a)
            clean = len(data) - len(data.lstrip(fill))  # poisoned bytes before the first stray one
            if clean < len(data):
                return a + clean - self.head
        return None

    def write_back(self) -> None:
        if self.payload is None:
            for off, n in self.extents:
                ctypes.memmove(self.lo + off, self.addr + off, n)


def stray_write_message(kernel: str, s: Staged, r: int, owners: dict, access: str = "wrote",
                        strides: dict[int, int] | None = None, where: str = "") -> str:
    """Names the argument nearest to byte r (from lo) of staging s, which the kernel accessed out of
    its bounds, with the element index when the argument's element size (`strides`) is known."""
    mine = [(idx, off, n, what) for idx, (t, off, n, what) in sorted(owners.items()) if t is s]
    past = [(r - off - n, idx, off, n, what) for idx, off, n, what in mine if r >= off + n]
    if past:
        _, idx, off, n, what = min(past)
        detail = f"past its end, at byte {r - off} of a {n}-byte buffer"
    else:
        d, idx, off, n, what = min((off - r, idx, off, n, what) for idx, off, n, what in mine)
        detail = f"{d} bytes before the start of its buffer"
    stride = (strides or {}).get(idx)
    if stride:
        detail = f"element {(r - off) // stride} ({stride}-byte elements), {detail}"
    return (f"kernel '{kernel}' {access} out of bounds of argument {idx} ({what}): {detail}{where}; "
            f"no argument was changed")
