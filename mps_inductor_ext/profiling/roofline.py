"""The MODELED time of a kernel on a named chip: the larger of its bytes over the chip's memory
bandwidth and its FLOPs over the chip's peak rate (a roofline). It leaves out launch overhead,
caches, occupancy and latency, so it is a lower bound for the kernel, never a measurement."""

from __future__ import annotations

import dataclasses

from .chips import Chip


@dataclasses.dataclass(frozen=True)
class Modeled:
    """MODELED seconds on `chip`, and which roof bounds it."""

    chip: str
    seconds: float
    bound: str  # "memory" or "compute"


def roofline(chip: Chip, nbytes: int, flops: int | None, dtype_bits: int) -> Modeled:
    """MODELED time of moving `nbytes` and computing `flops` (None: not modeled, memory only)."""
    if not isinstance(chip, Chip):
        raise TypeError(f"chip must be a chips.Chip, got {type(chip).__name__}")
    if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes < 0:
        raise ValueError(f"nbytes must be a non-negative int, got {nbytes!r}")
    memory = nbytes / (chip.bandwidth_gbs * 1e9)
    compute = 0.0 if flops is None else flops / (chip.tflops(dtype_bits) * 1e12)
    return Modeled(chip.name, max(memory, compute), "compute" if compute > memory else "memory")
