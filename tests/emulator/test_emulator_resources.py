"""The emulator's memory mappings: every loaded library takes its fiber stacks from the host's one
pool per thread (shaders/emulator/stacks.py). Stacks of each library's own cost up to 2048
mappings per library (a stack and its guard page for each of 1024 threads), and a test run that
loaded a few dozen libraries reached Linux's limit (vm.max_map_count, 65530)."""

from __future__ import annotations

import sys

import pytest
import torch

from mps_inductor_ext.shaders.emulator.library import EmulatedLibrary

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts /proc/self/maps (Linux)")


def source(tag: int) -> str:
    return f"""#include <metal_stdlib>
using namespace metal;
kernel void fill(device float* out [[buffer(0)]], uint i [[thread_position_in_grid]]) {{
  threadgroup_barrier(mem_flags::mem_none);  // a barrier: the threads run as fibers, each on a stack
  out[i] = {tag};
}}
"""


def mappings() -> int:
    with open("/proc/self/maps") as f:
        return sum(1 for _ in f)


def run(tag: int) -> None:
    out = torch.full((1024,), float("nan"))
    EmulatedLibrary(source(tag)).fill(out, threads=1024, group_size=1024)  # 1024 fibers
    assert bool((out == tag).all())


def test_libraries_share_the_threads_fiber_stacks():
    run(0)  # the pool for this thread is made once
    before = mappings()
    for tag in range(1, 7):
        run(tag)
    # A library's own code and data take a handful of mappings; its own stacks would take 2048.
    assert mappings() - before < 6 * 64
