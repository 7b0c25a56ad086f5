"""Throughput of the CPU emulator of Metal compute, in emulated GPU threads per second.

Runs the project's row-reduction kernel (simd_sum + threadgroup memory + a
barrier, so every thread is a fiber) and, for contrast, a synchronization-free
elementwise kernel. These are emulator times, not GPU times: they say how long
tests take here, nothing about a Mac.

    python benchmarks/emulator_throughput.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _timing import median_seconds  # noqa: E402

from mps_inductor_ext.shaders import compile_shader, load_example  # noqa: E402

SCALE = """
#include <metal_stdlib>
using namespace metal;
kernel void scale(device float* out [[buffer(0)]], constant float* x [[buffer(1)]],
                  uint i [[thread_position_in_grid]]) {
  out[i] = 2.0f * x[i];
}
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--cols", type=int, default=4096)
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.rows < 1 or args.cols < 1:
        parser.error("--repeats, --rows and --cols must be positive")

    torch.manual_seed(0)
    lib = compile_shader(load_example("row_reduce"), backend="cpu")
    x = torch.randn(args.rows, args.cols)
    out = torch.empty(args.rows)
    print("CPU emulator of Metal compute: emulator times, not GPU times")
    print(f"{'kernel':<34}{'threads':>10}{'group':>7}{'median s':>11}{'threads/s':>14}")
    for group in (32, 256, 1024):
        threads = args.rows * group

        def run(group=group, threads=threads):
            lib.row_sum_squares_float(out, x, args.cols, threads=[threads], group_size=[group])

        t = median_seconds(run, repeats=args.repeats)
        print(f"{'row_sum_squares_float (fibers)':<34}{threads:>10}{group:>7}{t:>11.4f}{threads / t:>14,.0f}")

    ew = compile_shader(SCALE, backend="cpu")
    n = args.rows * args.cols
    y = torch.randn(n)
    z = torch.empty(n)
    t = median_seconds(lambda: ew.scale(z, y), repeats=args.repeats)
    print(f"{'scale (no synchronization)':<34}{n:>10}{min(n, 1024):>7}{t:>11.4f}{n / t:>14,.0f}")
    # A tiny launch measures the cost of a launch itself (staging, guard pages, two schedules),
    # which dominates the test suite's thousands of small launches.
    t = median_seconds(lambda: ew.scale(z[:8], y[:8]), repeats=args.repeats * 20)
    print(f"{'scale, 8 threads (per launch)':<34}{8:>10}{8:>7}{t:>11.6f}{8 / t:>14,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
