"""Staging of a launch's buffers: each storage the arguments touch is copied between poisoned
red zones, the kernel runs on the copies, and the results go back only after a clean run.

Bytes no argument covers (red zones, and gaps between views of one storage) stay poisoned,
so reading them gives NaN / -1 and writing them is reported: a kernel may touch only the
tensors it was given. The two schedules' results are compared byte for byte, except where
atomic read-modify-writes landed in a float buffer, which may differ by rounding.
"""

from __future__ import annotations

import ctypes

import torch

from .abi import POISON

RED_ZONE = 4096
ALIGN = 64
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
    argument), between poisoned red zones."""

    def __init__(self, lo: int, length: int, payload: bytes | None = None):
        self.lo = lo  # address of the user's first covered byte; unused for scalars
        self.length = length
        self.payload = payload
        # The copy sits at the same offset from a 64-byte boundary as the original,
        # so a misaligned view stays misaligned for the kernel.
        raw = torch.empty(RED_ZONE + length + RED_ZONE + ALIGN, dtype=torch.uint8)
        shift = (lo - (raw.data_ptr() + RED_ZONE)) % ALIGN if payload is None else 0
        self.buf = raw[shift : shift + RED_ZONE + length + RED_ZONE]
        self.addr = self.buf.data_ptr() + RED_ZONE
        self.extents: list[tuple[int, int]] = []  # (offset from lo, length)
        self._gaps: list[tuple[int, int]] | None = None
        if payload is not None:
            self.cover(0, length)

    def cover(self, offset: int, length: int) -> None:
        self.extents.append((offset, length))
        self._gaps = None

    @property
    def gaps(self) -> list[tuple[int, int]]:
        """Buffer slices no argument covers (red zones included), as (start, stop) into buf."""
        if self._gaps is None:
            gaps, at = [], 0
            for off, n in sorted(self.extents):
                if RED_ZONE + off > at:
                    gaps.append((at, RED_ZONE + off))
                at = max(at, RED_ZONE + off + n)
            gaps.append((at, len(self.buf)))
            self._gaps = gaps
        return self._gaps

    def refill(self) -> None:
        for a, b in self.gaps:
            self.buf[a:b].fill_(POISON)
        for off, n in self.extents:
            src = self.payload if self.payload is not None else self.lo + off
            ctypes.memmove(self.addr + off, src, n)

    def first_stray_write(self) -> int | None:
        """Offset from lo of the first written byte that no argument covers, if any."""
        for a, b in self.gaps:
            bad = (self.buf[a:b] != POISON).nonzero()
            if len(bad):
                return a + int(bad[0]) - RED_ZONE
        return None

    def write_back(self) -> None:
        if self.payload is None:
            for off, n in self.extents:
                ctypes.memmove(self.lo + off, self.addr + off, n)



def stray_write_message(kernel: str, s: Staged, r: int, owners: dict) -> str:
    """Names the argument nearest to a stray write at offset r of staging s."""
    mine = [(idx, off, n, what) for idx, (t, off, n, what) in sorted(owners.items()) if t is s]
    past = [(r - off - n, idx, off, n, what) for idx, off, n, what in mine if r >= off + n]
    if past:
        _, idx, off, n, what = min(past)
        detail = f"past its end, at byte {r - off} of a {n}-byte buffer"
    else:
        d, idx, off, n, what = min((off - r, idx, off, n, what) for idx, off, n, what in mine)
        detail = f"{d} bytes before the start of its buffer"
    return f"kernel '{kernel}' wrote out of bounds of argument {idx} ({what}): {detail}; no argument was changed"
