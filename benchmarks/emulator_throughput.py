"""Throughput of the CPU emulator of Metal compute, in emulated GPU threads per second.

Runs the project's row-reduction kernel (simd_sum + threadgroup memory + a
barrier, so every thread is a fiber) and, for contrast, a synchronization-free
elementwise kernel. These are emulator times, not GPU times: they say how long
tests take here, nothing about a Mac.

Each kernel runs in every mode of the emulator, in one run, so the cost of the checks is read
off side by side: the fast build (the default), and the instrumented build with
MPSK_EMULATOR_CHECKS=memcheck, =memcheck,initcheck, =all (adds racecheck), and with counters
recorded (shaders.emulator.counters).

    python benchmarks/emulator_throughput.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _timing import median_seconds  # noqa: E402

from mps_inductor_ext.shaders import compile_shader, load_example  # noqa: E402
from mps_inductor_ext.shaders.emulator import counters, sanitizer  # noqa: E402

# (label, $MPSK_EMULATOR_CHECKS, record counters)
MODES = (
    ("fast", "", False),
    ("memcheck", "memcheck", False),
    ("memcheck+initcheck", "memcheck,initcheck", False),
    ("all checks", "all", False),
    ("counters", "", True),
)


@contextlib.contextmanager
def mode(checks: str, record: bool):
    saved = os.environ.get(sanitizer.VARIABLE)
    os.environ[sanitizer.VARIABLE] = checks
    try:
        with counters.record() if record else contextlib.nullcontext():
            yield
    finally:
        if saved is None:
            del os.environ[sanitizer.VARIABLE]
        else:
            os.environ[sanitizer.VARIABLE] = saved

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
    print(f"{'kernel':<32}{'mode':<20}{'threads':>9}{'group':>6}{'median s':>10}{'threads/s':>13}{'x fast':>8}")
    ew = compile_shader(SCALE, backend="cpu")
    n = args.rows * args.cols
    y = torch.randn(n)
    z = torch.empty(n)
    cases = []
    for group in (32, 256, 1024):
        threads = args.rows * group

        def run(group=group, threads=threads):
            lib.row_sum_squares_float(out, x, args.cols, threads=[threads], group_size=[group])

        cases.append(("row_sum_squares_float (fibers)", threads, group, run))
    cases.append(("scale (no synchronization)", n, min(n, 1024), lambda: ew.scale(z, y)))
    # A tiny launch measures the cost of a launch itself (staging, guard pages, two schedules),
    # which dominates the test suite's thousands of small launches.
    cases.append(("scale, 8 threads (per launch)", 8, 8, lambda: ew.scale(z[:8], y[:8])))
    for name, threads, group, run in cases:
        base = None
        for label, checks, record in MODES:
            with mode(checks, record):
                t = median_seconds(run, repeats=args.repeats)
            base = base or t
            print(f"{name:<32}{label:<20}{threads:>9}{group:>6}{t:>10.6f}{threads / t:>13,.0f}{t / base:>8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
