"""The instrumented build's checks (include/mpsk/sanitizer.h): which are on, and the range table
the host hands the runtime before each launch.

Every launch runs the fast build unless a check is asked for, with $MPSK_EMULATOR_CHECKS (a comma
list; "all" for every one) or while counters are recorded (counters.py):

- memcheck: any device or constant access outside every argument's bytes, at any distance, stops
  the launch before the access, naming the nearest argument, the element, and read or write;
  threadgroup accesses outside every threadgroup array too. On whenever the instrumented build runs
  (the classification that counting needs is the check).
- initcheck: reads of threadgroup memory never written in the group, and of device bytes never
  written in the launch that the host did not initialize: arguments named in `uninitialized=`, and
  tensors made by the package's `new_buffer` (its outputs and scratch, noted by
  `note_uninitialized` while initcheck is on) until a launch has taken them.
- racecheck: a device byte read or written by one thread after another thread wrote it with no
  barrier between (same threadgroup), or wrote it in another threadgroup; atomics never count.

The fast build is the default: the instrumented one is a second compile of each source and runs
1.4-8x slower (benchmarks/emulator_throughput.py measures every mode in one run).
"""

from __future__ import annotations

import ctypes
import os
import threading
import weakref
from enum import IntFlag

import torch

from .binding import HOST_MEMORY_DEVICES

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


NUM_COUNTERS = 14  # san::kNumCounters


def declare(dll: ctypes.CDLL) -> None:
    """Declares the instrumented library's sanitizer functions, after checking it agrees with this
    module on the range table's layout."""
    dll.mpsk_san_abi.restype = None
    dll.mpsk_san_abi.argtypes = [ctypes.c_void_p]
    got = (ctypes.c_long * 3)()
    dll.mpsk_san_abi(got)
    want = (ctypes.sizeof(RangeStruct), MAX_RANGES, NUM_COUNTERS)
    if tuple(got) != want:
        raise RuntimeError(f"the instrumented runtime and host disagree on the sanitizer's ABI "
                           f"(range bytes, ranges, counters): runtime {tuple(got)}, host {want}")
    dll.mpsk_san_configure.restype = ctypes.c_int
    dll.mpsk_san_configure.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
    dll.mpsk_san_counts.restype = ctypes.c_int
    dll.mpsk_san_counts.argtypes = [ctypes.c_void_p, ctypes.c_int]


_noted = threading.local()


def note_uninitialized(t: torch.Tensor) -> torch.Tensor:
    """Notes a freshly allocated tensor (an op's output or scratch) as holding no values yet, when
    initcheck is on: the next launch that takes it treats its bytes as never written (a read of one
    it did not write first is an error); after that launch it counts as written. Returns `t`."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"note_uninitialized takes a tensor, got {type(t).__name__}")
    checks = active_checks()
    if checks is not None and checks & Check.INITCHECK and t.device.type in HOST_MEMORY_DEVICES and t.numel():
        entries = _noted.__dict__.setdefault("entries", [])
        entries[:] = [e for e in entries if e[0]() is not None]
        entries.append((weakref.ref(t), t.data_ptr(), t.data_ptr() + t.numel() * t.element_size()))
    return t


def take_uninitialized(bindings: dict[int, object]) -> tuple[set[int], list]:
    """The indices of tensor arguments that lie in a noted tensor, and those notes (to drop once the
    launch has written them: `drop`)."""
    entries = getattr(_noted, "entries", None)
    if not entries:
        return set(), []
    hit, used = set(), []
    for idx, value in bindings.items():
        if not isinstance(value, torch.Tensor) or not value.numel():
            continue
        lo = value.data_ptr()
        for e in entries:
            alive = e[0]()
            if alive is not None and alive.data_ptr() == e[1] and e[1] <= lo < e[2]:
                hit.add(idx)
                used.append(e)
    return hit, used


def drop(notes: list) -> None:
    entries = getattr(_noted, "entries", None)
    if entries:
        entries[:] = [e for e in entries if not any(e is n for n in notes) and e[0]() is not None]
