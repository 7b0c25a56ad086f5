"""Memory-access counters of emulated launches: how many loads and stores each launch made, and
how many bytes, in device, constant and threadgroup memory (the cost model's inputs).

Stable interface:

    from mps_inductor_ext.shaders.emulator import counters
    with counters.record() as launches:
        lib.kernel(out, x)             # any emulated launch on this thread, however reached
    c = launches[0]                    # a LaunchCounts per launch, in launch order
    c.kernel, c.threads, c.group_size  # the kernel's name and the dispatch
    c.device.loads, c.device.load_bytes, c.device.stores, c.device.store_bytes
    c.constant.*, c.threadgroup.*      # the same fields (constant memory is never stored to)
    c.atomics, c.atomic_bytes          # atomic operations (device and threadgroup), counted apart

Counts are of the kernel's own accesses as compiled (after clang's -O2: values it keeps in
registers are not reloaded), one per load or store instruction, a vector access (float4) being one
access of its whole size; memcpy-like copies count as one load and one store of their length.
Scalars passed by value are constant memory. One launch is counted once (the emulator's second,
flipped schedule is not). Launches inside `record()` run the instrumented build (sanitizer.py), so
they are also memchecked; these are emulator counts, exact for the emulated program, not Metal's.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass

_local = threading.local()


@dataclass(frozen=True)
class SpaceCounts:
    """Accesses of one address space in one launch."""

    loads: int
    load_bytes: int
    stores: int
    store_bytes: int


@dataclass(frozen=True)
class LaunchCounts:
    """The counters of one launch."""

    kernel: str
    threads: tuple[int, int, int]
    group_size: tuple[int, int, int]
    device: SpaceCounts
    constant: SpaceCounts
    threadgroup: SpaceCounts
    atomics: int
    atomic_bytes: int


NUM_COUNTERS = 14  # san::kNumCounters


def from_raw(kernel: str, threads, group_size, raw) -> LaunchCounts:
    """LaunchCounts from san::Counter slots: (loads, load bytes, stores, store bytes) per space, then atomics."""
    spaces = [SpaceCounts(*(int(v) for v in raw[4 * s : 4 * s + 4])) for s in range(3)]
    return LaunchCounts(kernel, tuple(threads), tuple(group_size), *spaces, int(raw[12]), int(raw[13]))


@contextlib.contextmanager
def record() -> Iterator[list[LaunchCounts]]:
    """Collects a LaunchCounts for every emulated launch this thread makes inside the block (nested
    blocks each see the launches made inside them)."""
    launches: list[LaunchCounts] = []
    stack = _local.__dict__.setdefault("stack", [])
    stack.append(launches)
    try:
        yield launches
    finally:
        stack.remove(launches)


def recording() -> bool:
    """Whether a record() block is open on this thread."""
    return bool(getattr(_local, "stack", None))


def add(counts: LaunchCounts) -> None:
    for launches in getattr(_local, "stack", ()):
        launches.append(counts)
