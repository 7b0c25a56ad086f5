"""The host's side of a launch's containment (include/mpsk/containment.h): the limits a launch
runs under, and what a launch that a signal stopped reports.

- MPSK_EMULATOR_TIMEOUT_S (default 300): a launch (both schedules) running longer ends with a
  KernelError; an endless loop in a kernel cannot hang the process. The default is far above
  the longest legitimate launch of the tests and benchmarks (seconds).
- MPSK_EMULATOR_MAX_LAUNCH_THREADS (default 2^28): a grid of more threads is refused before
  anything runs; the emulator runs every thread twice, at a few million a second, so 2^28
  would already take minutes. The tests' and benchmarks' largest grids have a few million.
- Ctrl-C during a launch on Python's main thread ends the launch and raises KeyboardInterrupt
  (through Python's own SIGINT handler, which is back in place by then).
"""

from __future__ import annotations

import ctypes
import math
import os
import signal
import threading

from ..errors import KernelError

TIMEOUT_VARIABLE = "MPSK_EMULATOR_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 300.0
MAX_THREADS_VARIABLE = "MPSK_EMULATOR_MAX_LAUNCH_THREADS"
DEFAULT_MAX_LAUNCH_THREADS = 1 << 28
# containment.h's watchdog_signal(): a real-time signal, so not the user's SIGALRM.
WATCHDOG_SIGNAL = signal.SIGRTMAX - 7 if hasattr(signal, "SIGRTMAX") else -1


def time_limit() -> float:
    """Seconds a launch may run: $MPSK_EMULATOR_TIMEOUT_S, else DEFAULT_TIMEOUT_S."""
    raw = os.environ.get(TIMEOUT_VARIABLE, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{TIMEOUT_VARIABLE} must be a positive number of seconds, got {raw!r}")
    return value


def max_launch_threads() -> int:
    """The most threads one launch may have: $MPSK_EMULATOR_MAX_LAUNCH_THREADS, else the default."""
    raw = os.environ.get(MAX_THREADS_VARIABLE, "").strip()
    if not raw:
        return DEFAULT_MAX_LAUNCH_THREADS
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"{MAX_THREADS_VARIABLE} must be a positive number of threads, got {raw!r}")
    return int(raw)


def check_grid(kernel: str, grid: list[int]) -> None:
    """Refuses a grid too large to emulate in reasonable time, before anything runs."""
    total = math.prod(grid)
    limit = max_launch_threads()
    if total > limit:
        raise ValueError(
            f"kernel '{kernel}': a grid of {total:,} threads ({' x '.join(map(str, grid))}) is more than the "
            f"emulator runs in one launch ({limit:,}, run twice at a few million threads a second); set "
            f"{MAX_THREADS_VARIABLE} to raise the limit"
        )


def declare(dll: ctypes.CDLL) -> None:
    dll.mpsk_contain.argtypes = [ctypes.c_double, ctypes.c_int]
    dll.mpsk_contain.restype = None
    dll.mpsk_last_fault.argtypes = [ctypes.POINTER(ctypes.c_ulong), ctypes.POINTER(ctypes.c_int)]
    dll.mpsk_last_fault.restype = ctypes.c_int


def catches_sigint() -> bool:
    """Whether a launch on this thread should end on SIGINT: on Python's main thread, while Python
    handles SIGINT (not when it is ignored or left to the default action)."""
    return threading.current_thread() is threading.main_thread() and callable(signal.getsignal(signal.SIGINT))


def prepare(dll: ctypes.CDLL, seconds: float, sigint: bool) -> None:
    """Sets the limits of the calling thread's next launch."""
    dll.mpsk_contain(max(seconds, 1e-3), int(sigint))


def last_fault(dll: ctypes.CDLL) -> tuple[int, int, int]:
    """(signal, address, write: 1, 0 or -1 unknown) of what stopped the thread's last launch."""
    addr, write = ctypes.c_ulong(), ctypes.c_int()
    sig = dll.mpsk_last_fault(ctypes.byref(addr), ctypes.byref(write))
    return sig, addr.value, write.value


def stopped(kernel: str, sig: int, limit: float) -> KernelError | None:
    """The error for a launch SIGINT or the watchdog ended, or None for other signals. A SIGINT is
    handed back to Python first, whose handler raises KeyboardInterrupt (by default) right here."""
    if sig == signal.SIGINT:
        signal.raise_signal(signal.SIGINT)
        return KernelError(f"kernel '{kernel}' was interrupted (SIGINT); no argument was changed")
    if sig == WATCHDOG_SIGNAL:
        return KernelError(
            f"kernel '{kernel}' ran longer than the emulator's time limit of {limit:g} s (an endless loop?) and "
            f"was stopped; set {TIMEOUT_VARIABLE} to a larger number of seconds to allow it; no argument was changed"
        )
    return None
