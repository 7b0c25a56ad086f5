"""The instrumented build's checks (include/mpsk/sanitizer.h): which are on, and the range table
the host hands the runtime before each launch.

Every launch runs the fast build unless a check is asked for, with $MPSK_EMULATOR_CHECKS (a comma
list; "all" for every one) or while counters are recorded (counters.py):

- memcheck: any device or constant access outside every argument's bytes, at any distance, stops
  the launch before the access, naming the nearest argument, the element, and read or write;
  threadgroup accesses outside every threadgroup array too. On whenever the instrumented build runs
  (the classification that counting needs is the check).
- initcheck: reads of threadgroup memory never written in the group, and of device bytes never
  written in the launch that the host did not initialize (arguments named in `uninitialized=`).
- racecheck: a device byte read or written by one thread after another thread wrote it with no
  barrier between (same threadgroup), or wrote it in another threadgroup; atomics never count.

The fast build is the default: the instrumented one costs several times its time
(benchmarks/emulator_throughput.py measures both).
"""

from __future__ import annotations

import ctypes
import os
from enum import IntFlag

VARIABLE = "MPSK_EMULATOR_CHECKS"
MAX_RANGES = 64  # san::kMaxRanges


class Check(IntFlag):
    """Checks beyond memcheck (san::Check); memcheck is MEMCHECK, always on in the instrumented build."""

    MEMCHECK = 0
    INITCHECK = 1
    RACECHECK = 2


NAMES = {"memcheck": Check.MEMCHECK, "initcheck": Check.INITCHECK, "racecheck": Check.RACECHECK}


def parse(text: str) -> Check | None:
    """The checks a $MPSK_EMULATOR_CHECKS value names: None for none ("", "0", "none"), else the
    flags ("all" for every one)."""
    if not isinstance(text, str):
        raise TypeError(f"{VARIABLE} must be a str, got {type(text).__name__}")
    words = [w.strip().lower() for w in text.split(",") if w.strip()]
    if not words or words in (["0"], ["none"], ["off"]):
        return None
    flags = Check.MEMCHECK
    for w in words:
        if w == "all":
            flags |= Check.INITCHECK | Check.RACECHECK
        elif w in NAMES:
            flags |= NAMES[w]
        else:
            raise ValueError(f"{VARIABLE}: unknown check {w!r}; use a comma list of {', '.join(NAMES)}, or all")
    return flags


def active_checks() -> Check | None:
    """The checks $MPSK_EMULATOR_CHECKS asks for (read at each launch, so tests can switch it)."""
    return parse(os.environ.get(VARIABLE, ""))


class RangeStruct(ctypes.Structure):
    """san::Range: one staged argument."""

    _fields_ = [
        ("lo", ctypes.c_ulong),
        ("hi", ctypes.c_ulong),
        ("base", ctypes.c_ulong),
        ("init", ctypes.c_void_p),
        ("writer", ctypes.c_void_p),
        ("index", ctypes.c_int),
        ("elem_size", ctypes.c_int),
        ("space", ctypes.c_int),
        ("uninitialized", ctypes.c_int),
        ("read_only", ctypes.c_int),
        ("reserved", ctypes.c_int),
    ]


def declare(dll: ctypes.CDLL) -> None:
    dll.mpsk_san_configure.restype = ctypes.c_int
    dll.mpsk_san_configure.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
    dll.mpsk_san_counts.restype = ctypes.c_int
    dll.mpsk_san_counts.argtypes = [ctypes.c_void_p, ctypes.c_int]
