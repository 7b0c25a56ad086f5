"""Counts what a program launches on the emulated `mps` device: Metal kernels (Inductor's and this
project's) and the ATen calls that launch work on a Mac (extern calls of a compiled program, every
op of an eager one).

On a Mac the CPU cost of encoding each launch often sets small-batch decode speed, so launches per
forward is the figure to compare between backends. It is a count of this program's launches, not
a measurement of a Mac: an ATen op counts once here though MPS may encode several kernels (or, for
a few, none) for it.
"""

from __future__ import annotations

import ctypes
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

_lock = threading.Lock()
_metal: Counter[str] = Counter()  # "inductor" / "mpsk" -> kernel launches
_lib: ctypes.CDLL | None = None


@dataclass
class LaunchCounts:
    """Launches between two points of a program on the emulated mps device."""

    inductor_kernels: int = 0
    mpsk_kernels: int = 0
    aten: Counter[str] = field(default_factory=Counter)

    @property
    def aten_calls(self) -> int:
        return sum(self.aten.values())

    @property
    def total(self) -> int:
        return self.inductor_kernels + self.mpsk_kernels + self.aten_calls

    def __sub__(self, other: LaunchCounts) -> LaunchCounts:
        aten = Counter(self.aten)
        aten.subtract(other.aten)
        return LaunchCounts(
            self.inductor_kernels - other.inductor_kernels,
            self.mpsk_kernels - other.mpsk_kernels,
            +aten,
        )

    def summary(self) -> str:
        return (
            f"{self.total} launches: {self.inductor_kernels} Inductor Metal kernels, "
            f"{self.mpsk_kernels} mpsk kernels, {self.aten_calls} ATen calls"
        )


def attach(lib: ctypes.CDLL) -> None:
    global _lib
    lib.mpsk_emulated_mps_op_counts.restype = ctypes.c_size_t
    lib.mpsk_emulated_mps_op_counts.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
    _lib = lib


def _aten_counts() -> Counter[str]:
    if _lib is None:
        return Counter()
    need = _lib.mpsk_emulated_mps_op_counts(None, 0)
    buf = ctypes.create_string_buffer(need + 1)
    _lib.mpsk_emulated_mps_op_counts(buf, need + 1)
    out: Counter[str] = Counter()
    for line in buf.value.decode().splitlines():
        name, n = line.rsplit("\t", 1)
        out[name] = int(n)
    return out


def snapshot() -> LaunchCounts:
    """Launches since the device was installed."""
    with _lock:
        metal = Counter(_metal)
    return LaunchCounts(metal["inductor"], metal["mpsk"], _aten_counts())


@contextmanager
def count_launches() -> Iterator[LaunchCounts]:
    """`with count_launches() as n: model(x)`: n holds the launches of the block once it ends."""
    from .install import installed

    if not installed():
        raise RuntimeError("count_launches() needs the emulated mps device: call emulate_mps_device() first")
    result = LaunchCounts()
    before = snapshot()
    try:
        yield result
    finally:
        diff = snapshot() - before
        result.inductor_kernels, result.mpsk_kernels, result.aten = diff.inductor_kernels, diff.mpsk_kernels, diff.aten


def record_metal_launch(origin: str) -> None:
    with _lock:
        _metal[origin] += 1
