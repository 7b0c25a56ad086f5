"""Threads: one kernel function and one compiled model called from several threads at once, and
`config.patch` in several threads at once."""

import threading

import pytest
import torch

import mps_inductor_ext as mpsk
from mps_inductor_ext.shaders import compile_shader

SCALE = """
#include <metal_stdlib>
using namespace metal;
kernel void scale(device float* out [[buffer(0)]], constant float* x [[buffer(1)]],
                  constant float& factor [[buffer(2)]], uint i [[thread_position_in_grid]]) {
  out[i] = x[i] * factor;
}
"""


def in_threads(work, n: int = 2) -> list[str]:
    """Runs work(k) in n threads that start together; the failures, as text."""
    failures: list[str] = []
    start = threading.Barrier(n)

    def run(k):
        try:
            start.wait(timeout=60)
            work(k)
        except Exception as e:  # noqa: BLE001 - collected for the assertion
            failures.append(repr(e))

    threads = [threading.Thread(target=run, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return failures


def test_one_kernel_function_encodes_in_two_threads_at_once():
    """AOTInductor's generated code and the shim share one kernel function per kernel name; two
    threads inside run_command_block at once each keep their own arguments."""
    fn = compile_shader(SCALE, backend="cpu").get_kernel_function("scale")
    x = torch.arange(64, dtype=torch.float32)
    outs = [torch.zeros(64) for _ in range(2)]
    inside = threading.Barrier(2)

    def work(k):
        def block():
            fn.start_encoding()
            fn.set_arg_tensor(0, outs[k])
            fn.set_arg_tensor(1, x)
            inside.wait(timeout=60)  # both threads have started encoding before either dispatches
            fn.set_arg_tensor(2, torch.tensor(float(k + 2)))
            fn.dispatch(64)

        fn.run_command_block(block)

    assert in_threads(work) == []
    for k in range(2):
        torch.testing.assert_close(outs[k], x * (k + 2), rtol=0, atol=0)


class Norm(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.rand(32, generator=torch.Generator().manual_seed(0)) + 0.5)

    def forward(self, x):
        return torch.nn.functional.rms_norm(x, (32,), self.weight, 1e-6)


@pytest.mark.slow
def test_one_compiled_model_runs_in_two_threads_at_once():
    x = torch.randn(3, 32, generator=torch.Generator().manual_seed(1))
    model = Norm()
    with mpsk.config.patch(emulate_metal=True):
        compiled = torch.compile(model, backend="mpsk")
        expected = compiled(x)

    def work(k):
        with mpsk.config.patch(emulate_metal=True):
            for _ in range(10):
                torch.testing.assert_close(compiled(x), expected, rtol=0, atol=0)

    assert in_threads(work) == []
    torch.testing.assert_close(expected, model(x), rtol=1e-5, atol=1e-5)


def test_config_patch_in_two_threads_leaves_the_settings_as_they_were():
    """Each thread's patch is its own: inside, a thread sees its own value whatever the other set;
    after both exit, nothing is left changed (a shared save-and-restore would leave the value the
    thread that entered second saw)."""
    before = mpsk.config.snapshot()
    entered, inside, zero_left = threading.Barrier(2), threading.Barrier(2), threading.Event()
    seen = {}

    def work(k):
        value = not before["emulate_metal"] if k == 0 else before["emulate_metal"]
        if k == 1:
            entered.wait(timeout=60)  # thread 0 is inside its patch: thread 1 enters second
        with mpsk.config.patch(emulate_metal=value, patterns={"softmax": False}):
            if k == 0:
                entered.wait(timeout=60)
            inside.wait(timeout=60)
            seen[k] = mpsk.config.emulate_metal
            if k == 0:
                mpsk.config.rope = mpsk.config.RopePolicy(threads_per_group=64)  # ends with the block
                assert mpsk.config.rope.threads_per_group == 64
            else:
                assert zero_left.wait(timeout=60)  # and leaves last
        if k == 0:
            zero_left.set()

    assert in_threads(work) == []
    assert seen == {0: not before["emulate_metal"], 1: before["emulate_metal"]}
    assert mpsk.config.snapshot() == before


def test_config_patch_is_checked_and_an_assignment_outside_it_stays():
    with pytest.raises(AttributeError, match="no setting 'emulate'"), mpsk.config.patch(emulate=True):
        pass
    assert mpsk.config.snapshot()["emulate_metal"] == mpsk.config.emulate_metal
    old = mpsk.config.quantized
    try:
        mpsk.config.quantized = mpsk.config.QuantizedPolicy(simdgroups=4)
        with mpsk.config.patch(emulate_metal=True):
            assert mpsk.config.quantized.simdgroups == 4
        assert mpsk.config.quantized.simdgroups == 4
    finally:
        mpsk.config.quantized = old
