"""Containment when launches overlap in several threads (issue 12): a kernel that faults while
another thread's launch has just ended is still a KernelError, not the end of the process. Run in a
process of its own, since the failure this guards against kills the process."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent('''
    import threading, time, torch
    from mps_inductor_ext.shaders import KernelError, compile_shader

    SRC = """
    #include <metal_stdlib>
    using namespace metal;
    // Spins for `n` steps, then writes at `at` (a fault in the guard pages when out of bounds).
    kernel void spin_then_write(device float* o [[buffer(0)]], constant long& n [[buffer(1)]],
                                constant long& at [[buffer(2)]], uint i [[thread_position_in_grid]]) {
      float x = o[0];
      for (long k = 0; k < n; ++k) x = x * 0.999999f + 1e-6f;
      o[at] = x;
    }
    """
    lib = compile_shader(SRC, backend="cpu")
    lib.spin_then_write(torch.zeros(4), 1, 0, threads=[1])  # built and loaded before it is timed
    steps = 1 << 16
    t0 = time.monotonic()
    lib.spin_then_write(torch.zeros(4), steps, 0, threads=[1])
    per_step = (time.monotonic() - t0) / (2 * steps)  # two schedules
    short = int(0.3 / per_step)  # about 0.3 s a schedule

    def ends_first():
        lib.spin_then_write(torch.zeros(4), short, 0, threads=[1])

    first = threading.Thread(target=ends_first)
    first.start()
    time.sleep(0.05)  # the faulting launch starts second and ends last
    try:
        lib.spin_then_write(torch.zeros(4), 4 * short, 1 << 24, threads=[1])
    except KernelError as e:
        print("KernelError:", str(e)[:80])
    first.join()
    lib.spin_then_write(torch.zeros(4), 1, 0, threads=[1])
    print("alive")
''')


def test_a_fault_after_another_threads_launch_ended_is_a_kernel_error():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, f"the process died (status {proc.returncode}):\n{proc.stderr[-3000:]}"
    assert "KernelError: kernel 'spin_then_write'" in proc.stdout
    assert proc.stdout.strip().endswith("alive")
