"""Per-launch memory counters from the instrumented emulator: the one place the profiler reads them.

The instrumented emulator (`shaders.emulator.counters`) counts, for each launch, the bytes a
kernel loads and stores through device, constant and threadgroup memory, as compiled (a value kept
in a register is not reloaded), once per launch (not the emulator's second, flipped schedule).
Where the emulator in use has no counters, `recording()` yields None and the profile says "not
counted" rather than guessing.

Device bytes are the traffic compared with the ideal: constant memory here is mostly the kernels'
`constant long&` size arguments, read by every thread and served from a cache on a GPU, so it is
reported beside, not added in.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator


@dataclasses.dataclass(frozen=True)
class MemoryCounts:
    device_loaded: int = 0
    device_stored: int = 0
    constant_loaded: int = 0
    threadgroup_loaded: int = 0
    threadgroup_stored: int = 0
    atomic_bytes: int = 0  # atomic operations' bytes (device and threadgroup), counted apart

    @property
    def device_bytes(self) -> int:
        """Bytes loaded from and stored to device memory: the traffic compared with the ideal."""
        return self.device_loaded + self.device_stored

    @property
    def threadgroup_bytes(self) -> int:
        return self.threadgroup_loaded + self.threadgroup_stored

    def __add__(self, other: MemoryCounts) -> MemoryCounts:
        return MemoryCounts(*(a + b for a, b in zip(dataclasses.astuple(self), dataclasses.astuple(other),
                                                     strict=True)))

    def scaled(self, factor: float) -> MemoryCounts:
        return MemoryCounts(*(round(a * factor) for a in dataclasses.astuple(self)))


def _emulator_counters():
    try:
        from ..shaders.emulator import counters
    except ImportError:  # an emulator build without counters
        return None
    return counters


def available() -> bool:
    """Whether the emulator in use counts memory accesses."""
    return _emulator_counters() is not None


@contextlib.contextmanager
def recording() -> Iterator[list | None]:
    """Collects the emulator's per-launch counters of the block (in launch order), or yields None
    where the emulator does not count."""
    emulator = _emulator_counters()
    if emulator is None:
        yield None
        return
    with emulator.record() as launches:
        yield launches


def memory_counts(raw: object) -> MemoryCounts:
    """MemoryCounts from one of the emulator's per-launch records."""
    return MemoryCounts(raw.device.load_bytes, raw.device.store_bytes, raw.constant.load_bytes,
                        raw.threadgroup.load_bytes, raw.threadgroup.store_bytes, raw.atomic_bytes)
