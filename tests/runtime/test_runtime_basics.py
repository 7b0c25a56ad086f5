"""The shader runtime end to end: compile, bind, dispatch, on the emulated backend."""

import pytest
import torch
from helpers import nan_like, requires_mps

from mps_inductor_ext.shaders import compile_shader, load_example

SCALE = """
#include <metal_stdlib>
using namespace metal;
kernel void scale(device float* out [[buffer(0)]], constant float* x [[buffer(1)]],
                  constant float& a [[buffer(2)]], uint i [[thread_position_in_grid]]) {
  out[i] = a * x[i];
}
"""


def test_elementwise_kernel(emulate):
    lib = emulate(SCALE)
    x = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    out = nan_like(x)
    lib.scale(out, x, 2.5)
    torch.testing.assert_close(out, 2.5 * x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("cols,group", [(1, 32), (31, 32), (1000, 64), (4096, 256), (5000, 1024)])
def test_row_reduction(emulate, dtype, cols, group):
    lib = emulate(load_example("row_reduce"))
    name = {torch.float32: "float", torch.float16: "half", torch.bfloat16: "bfloat"}[dtype]
    x = torch.randn(5, cols, generator=torch.Generator().manual_seed(cols)).to(dtype)
    out = torch.full((5,), float("nan"))
    getattr(lib, f"row_sum_squares_{name}")(out, x, cols, threads=[5 * group], group_size=[group])
    ref = (x.double() ** 2).sum(-1).float()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-4)


def test_shim_calls_match_convenience_call(emulate):
    lib = emulate(SCALE)
    fn = lib.get_kernel_function("scale")
    x = torch.randn(77, generator=torch.Generator().manual_seed(1))
    out = nan_like(x)

    def block():
        fn.start_encoding()
        fn.set_arg_tensor(0, out)
        fn.set_arg_tensor(1, x)
        fn.set_arg_tensor(2, torch.tensor([3.0]))
        fn.dispatch(77, 32)

    fn.run_command_block(block)
    torch.testing.assert_close(out, 3.0 * x)
    assert fn.max_threads_per_threadgroup == 1024
    assert fn.thread_execution_width == 32
    assert fn.static_thread_group_memory_length == 0


def test_static_threadgroup_memory_length(emulate):
    lib = emulate(load_example("row_reduce"))
    assert lib.row_sum_squares_half.static_thread_group_memory_length == 32 * 4


@requires_mps
def test_row_reduction_agrees_with_mps():
    src = load_example("row_reduce")
    x = torch.randn(7, 3000, generator=torch.Generator().manual_seed(3))
    outs = []
    for backend, device in (("cpu", "cpu"), ("mps", "mps")):
        lib = compile_shader(src, backend=backend)
        out = torch.full((7,), float("nan"), device=device)
        lib.row_sum_squares_float(out, x.to(device), 3000, threads=[7 * 256], group_size=[256])
        outs.append(out.cpu())
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-3)
