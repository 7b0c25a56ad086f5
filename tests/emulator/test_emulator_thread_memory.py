"""What the emulator maps for a host thread (fiber stacks, its Thread pool, its signal stack) is
unmapped when that thread ends: a host running kernels from many short-lived threads must not grow
without bound (before: 30 threads of 1024-thread groups kept 7.9 GiB of address space)."""

import gc
import threading
from pathlib import Path

import pytest
import torch

from mps_inductor_ext.shaders import compile_shader

# A barrier puts every emulated thread on a fiber stack of its own.
SOURCE = """
#include <metal_stdlib>
using namespace metal;
kernel void k(device float* o [[buffer(0)]], uint i [[thread_position_in_grid]],
              uint l [[thread_index_in_threadgroup]]) {
  threadgroup float t[256];
  t[l] = i;
  threadgroup_barrier(mem_flags::mem_threadgroup);
  o[i] = t[255 - l];
}
"""
MAPS = Path("/proc/self/maps")


def _mappings() -> tuple[int, int]:
    """(number of mappings, bytes of address space) of this process."""
    count = size = 0
    for line in MAPS.read_text().splitlines():
        lo, hi = (int(a, 16) for a in line.split()[0].split("-"))
        count, size = count + 1, size + hi - lo
    return count, size


@pytest.mark.skipif(not MAPS.exists(), reason="needs /proc/self/maps (Linux) to count mappings")
def test_short_lived_threads_leave_no_emulator_memory_behind():
    lib = compile_shader(SOURCE, backend="cpu")
    expected = torch.arange(256, dtype=torch.float32).flip(0)

    def launch():
        out = torch.zeros(256)
        lib.k(out, threads=256, group_size=256)
        torch.testing.assert_close(out, expected)

    def in_a_thread():
        t = threading.Thread(target=launch)
        t.start()
        t.join()

    for _ in range(3):  # the process's one-time costs (torch's pools, malloc arenas) first
        in_a_thread()
    gc.collect()
    count0, size0 = _mappings()
    for _ in range(30):
        in_a_thread()
    gc.collect()
    count1, size1 = _mappings()
    # Each thread left behind would keep 2 mappings per fiber stack (a stack and its guard page),
    # 256 here, and 260 KiB of address space each: 30 threads, about 15000 mappings and 2 GiB. What
    # may remain is the C library's (a malloc arena is 64 MiB of address space).
    assert count1 - count0 < 100, f"{count1 - count0} mappings more after 30 threads"
    assert size1 - size0 < 256 << 20, f"{(size1 - size0) >> 20} MiB more address space after 30 threads"
