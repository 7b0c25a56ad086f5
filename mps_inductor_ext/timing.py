"""Wall-clock timing of device work: medians of repeated runs after warm-up, synchronized on MPS.

Shared by `python -m mps_inductor_ext tune` and the benchmarks. Off a Mac these time the CPU
emulator, whose times are not GPU times: callers say so wherever they print them.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

Timer = Callable[[Callable[[], object]], float]  # fn -> seconds per call


def median_seconds(fn: Callable[[], object], *, warmup: int = 1, repeats: int = 5) -> float:
    """Median wall time of `fn` over `repeats` runs, after `warmup` untimed runs."""
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be a positive int, got {repeats!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be a non-negative int, got {warmup!r}")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def device_timer(device: str, repeats: int, warmup: int) -> Timer:
    """A timer for work on `device`: on "mps" each run is bracketed by torch.mps.synchronize(), so the
    time is the GPU's (plus one launch's CPU cost), not the time to enqueue it."""
    if device not in ("mps", "cpu"):
        raise ValueError(f"device must be 'mps' or 'cpu', got {device!r}")

    def sync() -> None:
        if device == "mps":
            torch.mps.synchronize()

    def measure(fn: Callable[[], object]) -> float:
        def run() -> None:
            sync()
            fn()
            sync()

        return median_seconds(run, warmup=warmup, repeats=repeats)

    return measure
