"""The emulator's fiber stacks: one pool per host thread, shared by every loaded library.

Each fiber (one emulated GPU thread) runs on a stack of its own above a guard page, so an
overflow faults instead of corrupting a neighbour. A library allocating its own would cost up to
2048 memory mappings (a stack and its guard page, for each of 1024 threads) per library, and a
process holding a few dozen libraries reaches Linux's limit of about 65000 mappings
(vm.max_map_count), where every allocation fails. So each library asks the host for stack i of
the calling thread (`mpsk_set_stack_provider`), and the host keeps one set per thread, unmapped
when that thread ends (a host calling kernels from many short-lived threads would otherwise keep
every one's stacks: 260 KiB of address space per emulated thread).
"""

from __future__ import annotations

import ctypes
import mmap
import threading

PAGE = mmap.PAGESIZE
PROT_NONE = 0  # mmap.PROT_NONE arrived in Python 3.13
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_MAP_FAILED = ctypes.c_void_p(-1).value

_local = threading.local()
_stack_bytes = 0  # every library's kFiberStack (the ABI check keeps them equal)


def _allocate(i: int) -> int:
    """Stack i of the calling thread; 0 (the library then maps its own) if it cannot be had."""
    try:
        return _stack(i)
    except Exception:  # noqa: BLE001 - nothing may propagate into the C caller
        return 0


class _ThreadStacks(dict):
    """One thread's stacks by index (the address above each guard page); unmapped when the thread
    ends, as its threading.local storage goes."""

    def __init__(self, mapping_bytes: int):
        super().__init__()
        self.mapping_bytes = mapping_bytes

    def __del__(self, munmap=_libc.munmap, page=PAGE) -> None:  # bound now: __del__ may run at shutdown
        for address in self.values():
            munmap(address - page, self.mapping_bytes)
        self.clear()


def _stack(i: int) -> int:
    stacks = _local.__dict__.get("stacks")
    if stacks is None:
        stacks = _local.stacks = _ThreadStacks(_stack_bytes + PAGE)
    address = stacks.get(i)
    if address is None:
        size = _stack_bytes + PAGE
        base = _libc.mmap(None, size, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
        if base in (None, _MAP_FAILED):
            return 0  # the library then allocates its own, and reports a failure as it always did
        _libc.mprotect(base, PAGE, PROT_NONE)
        address = stacks[i] = base + PAGE
    return address


_PROVIDER_TYPE = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_int)
_provider = _PROVIDER_TYPE(_allocate)  # kept alive for the process: libraries hold its address


def attach(dll: ctypes.CDLL) -> None:
    """Makes a freshly loaded library take its fiber stacks from the host's pool."""
    global _stack_bytes
    dll.mpsk_fiber_stack_bytes.restype = ctypes.c_ulong
    size = int(dll.mpsk_fiber_stack_bytes())
    if _stack_bytes and size != _stack_bytes:
        raise RuntimeError(f"emulated libraries disagree on the fiber stack size ({size} vs {_stack_bytes} bytes)")
    _stack_bytes = size
    dll.mpsk_set_stack_provider.argtypes = [_PROVIDER_TYPE]
    dll.mpsk_set_stack_provider(_provider)
