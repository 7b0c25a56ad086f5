"""The shim-mirror API of shaders/runtime.py (AOTInductor's aoti_torch_mps_* calls), backend
selection, and agreement of the cpu emulator with the real mps backend where one exists."""

import pytest
import torch
from helpers import requires_mps

from mps_inductor_ext.shaders import compile_shader, resolve_backend

SRC = """
#include <metal_stdlib>
using namespace metal;
kernel void axpb(device float* out [[buffer(0)]], constant float* x [[buffer(1)]],
                 constant long& a [[buffer(2)]], constant long& b [[buffer(3)]],
                 uint i [[thread_position_in_grid]]) {
  out[i] = a * x[i] + b;
}
kernel void grid2(device float* out [[buffer(0)]], uint2 p [[thread_position_in_grid]],
                  uint2 g [[threads_per_grid]]) {
  out[p.y * g.x + p.x] = p.x + 100 * p.y;
}
kernel void block_sum(device float* out [[buffer(0)]], constant float* x [[buffer(1)]],
                      uint i [[thread_position_in_grid]], uint t [[thread_index_in_threadgroup]],
                      uint g [[threadgroup_position_in_grid]], uint n [[threads_per_threadgroup]],
                      uint lane [[thread_index_in_simdgroup]], uint sg [[simdgroup_index_in_threadgroup]]) {
  threadgroup float partial[32];
  float v = simd_sum(x[i]);
  if (lane == 0) partial[sg] = v;
  threadgroup_barrier(mem_flags::mem_threadgroup);
  if (t == 0) {
    float s = 0.0;
    for (uint k = 0; k < (n + 31) / 32; ++k) s += partial[k];
    out[g] = s;
  }
}
"""

X = torch.randn(64, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def fn():
    return compile_shader(SRC, backend="cpu").get_kernel_function("axpb")


def test_command_block_dispatches(fn):
    out = torch.full((64,), float("nan"))

    def block():
        fn.start_encoding()
        fn.set_arg_tensor(0, out)
        fn.set_arg_tensor(1, X)
        fn.set_arg_int(2, 3)
        fn.set_arg_int(3, -2)
        fn.dispatch(64, 16)

    fn.run_command_block(block)
    torch.testing.assert_close(out, 3 * X - 2)


def test_two_dim_dispatch():
    fn = compile_shader(SRC, backend="cpu").get_kernel_function("grid2")
    out = torch.full((15,), float("nan"))

    def block():
        fn.start_encoding()
        fn.set_arg_tensor(0, out)
        fn.dispatch([5, 3], [2, 2])

    fn.run_command_block(block)
    y, x = torch.meshgrid(torch.arange(3), torch.arange(5), indexing="ij")
    assert torch.equal(out, (x + 100 * y).flatten().float())


def _in_block(fn, *calls):
    """Runs calls (on fn) inside a command block after start_encoding."""

    def block():
        fn.start_encoding()
        for call in calls:
            call()

    fn.run_command_block(block)


def test_start_encoding_outside_command_block(fn):
    with pytest.raises(RuntimeError, match="kernel 'axpb': start_encoding outside run_command_block"):
        fn.start_encoding()


def test_set_arg_before_start_encoding(fn):
    def block():
        fn.set_arg_int(2, 1)

    with pytest.raises(RuntimeError, match="set an argument before start_encoding"):
        fn.run_command_block(block)


def test_dispatch_outside_command_block(fn):
    with pytest.raises(RuntimeError, match="dispatch before start_encoding"):
        fn.dispatch(4)


def test_command_blocks_do_not_nest(fn):
    with pytest.raises(RuntimeError, match="command blocks do not nest"):
        fn.run_command_block(lambda: fn.run_command_block(lambda: None))


def test_run_command_block_needs_a_callable(fn):
    with pytest.raises(TypeError, match="needs a callable"):
        fn.run_command_block(None)


def test_missing_argument_index(fn):
    """Indices may have holes (the emulator binds by index), but a buffer the kernel declares
    and nothing makes optional must be bound."""
    out = torch.zeros(64)
    with pytest.raises(TypeError, match=r"takes buffers \[0, 1, 2, 3\] but got arguments for \[0, 2, 3\]"):
        _in_block(
            fn,
            lambda: fn.set_arg_tensor(0, out),
            lambda: fn.set_arg_int(2, 1),
            lambda: fn.set_arg_int(3, 1),
            lambda: fn.dispatch(64),
        )
    assert torch.equal(out, torch.zeros(64))


def test_too_few_arguments_reaches_the_kernel_check(fn):
    with pytest.raises(TypeError, match=r"takes buffers \[0, 1, 2, 3\] but got arguments for \[0, 1\]"):
        _in_block(
            fn, lambda: fn.set_arg_tensor(0, torch.zeros(64)), lambda: fn.set_arg_tensor(1, X), lambda: fn.dispatch(64)
        )


@pytest.mark.parametrize(
    "call,error,expect",
    [
        (lambda f: f.set_arg_int(2, 1.5), TypeError, r"set_arg_int\(2\) needs an int, got float"),
        (lambda f: f.set_arg_int(2, True), TypeError, r"needs an int, got bool"),
        (lambda f: f.set_arg_int(2, 2**63), ValueError, r"does not fit in int64"),
        (lambda f: f.set_arg_int(2, -(2**63) - 1), ValueError, r"does not fit in int64"),
        (lambda f: f.set_arg_int(-1, 1), ValueError, r"argument index must be a non-negative int"),
        (lambda f: f.set_arg_tensor(0, [1.0]), TypeError, r"set_arg_tensor\(0\) needs a tensor, got list"),
        (lambda f: f.dispatch(0), ValueError, r"length entries must be positive"),
        (lambda f: f.dispatch([]), ValueError, r"length must be an int or a sequence of 1 to 3 ints"),
        (lambda f: f.dispatch([1, 1, 1, 1]), ValueError, r"sequence of 1 to 3 ints"),
        (lambda f: f.dispatch(4.0), ValueError, r"length must be an int"),
        (lambda f: f.dispatch([4, 2], [4]), ValueError, r"length has 2 dimensions but group_size has 1"),
        (lambda f: f.dispatch(64, 2048), ValueError, r"exceeds the kernel's limit of 1024"),
    ],
)
def test_bad_shim_calls(fn, call, error, expect):
    out = torch.zeros(64)
    with pytest.raises(error, match=expect):
        _in_block(
            fn,
            lambda: fn.set_arg_tensor(0, out),
            lambda: fn.set_arg_tensor(1, X),
            lambda: fn.set_arg_int(2, 1),
            lambda: fn.set_arg_int(3, 1),
            lambda: call(fn),
        )
    assert torch.equal(out, torch.zeros(64))


def test_int64_extremes_pass_through(fn):
    out = torch.zeros(64)
    _in_block(
        fn,
        lambda: fn.set_arg_tensor(0, out),
        lambda: fn.set_arg_tensor(1, torch.zeros(64)),
        lambda: fn.set_arg_int(2, 0),
        lambda: fn.set_arg_int(3, -(2**63)),
        lambda: fn.dispatch(64),
    )
    assert torch.equal(out, torch.full((64,), -(2.0**63)))


def test_unknown_kernel_function():
    lib = compile_shader(SRC, backend="cpu")
    with pytest.raises(AttributeError, match=r"no kernel 'nope'; it has \['axpb', 'block_sum', 'grid2'\]"):
        lib.get_kernel_function("nope")
    with pytest.raises(TypeError, match="kernel name must be a str"):
        lib.get_kernel_function(3)


def test_backend_selection():
    with pytest.raises(ValueError, match=r"backend must be one of \('auto', 'mps', 'cpu'\), got 'bogus'"):
        compile_shader(SRC, backend="bogus")
    with pytest.raises(ValueError, match="backend must be one of"):
        resolve_backend(None)
    expected = "mps" if torch.backends.mps.is_available() else "cpu"
    assert resolve_backend("auto") == expected
    assert compile_shader(SRC, backend="auto").backend == expected


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="this machine has an MPS device")
def test_mps_backend_without_a_gpu():
    with pytest.raises(RuntimeError, match=r"backend='mps' needs an Apple GPU.*use backend='cpu'"):
        compile_shader(SRC, backend="mps")


@pytest.mark.parametrize(
    "source,error,expect",
    [
        ("", ValueError, "shader source is empty"),
        ("  \n", ValueError, "shader source is empty"),
        (b"kernel", TypeError, "shader source must be a str, got bytes"),
        (None, TypeError, "got NoneType"),
    ],
)
def test_bad_source(source, error, expect):
    with pytest.raises(error, match=expect):
        compile_shader(source, backend="cpu")


@pytest.mark.parametrize("group", [32, 100, 256])
def test_block_sum_on_cpu(group):
    """The kernel the mps comparison uses is itself right on the emulator (edge group included)."""
    x = torch.randn(1000, generator=torch.Generator().manual_seed(group))
    out = torch.full(((1000 + group - 1) // group,), float("nan"))
    compile_shader(SRC, backend="cpu").block_sum(out, x, threads=1000, group_size=group)
    ref = torch.nn.functional.pad(x, (0, -1000 % group)).view(-1, group).sum(1)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-4)


@requires_mps
@pytest.mark.parametrize("group", [32, 64, 256])
def test_block_sum_agrees_with_mps(group):
    x = torch.randn(1000, generator=torch.Generator().manual_seed(group))
    outs = []
    for backend, device in (("cpu", "cpu"), ("mps", "mps")):
        lib = compile_shader(SRC, backend=backend)
        n_groups = (1000 + group - 1) // group
        out = torch.full((n_groups,), float("nan"), device=device)
        lib.block_sum(out, x.to(device), threads=1000, group_size=group)
        outs.append(out.cpu())
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        outs[0], torch.nn.functional.pad(x, (0, -1000 % group)).view(-1, group).sum(1), rtol=1e-5, atol=1e-4
    )


@requires_mps
def test_shim_and_convenience_call_agree_with_mps():
    x = torch.randn(300, 7, generator=torch.Generator().manual_seed(5))[:, 2]
    results = []
    for backend, device in (("cpu", "cpu"), ("mps", "mps")):
        lib = compile_shader(SRC, backend=backend)
        out = torch.full((300,), float("nan"), device=device)
        lib.axpb(out, x.contiguous().to(device), 3, -1)
        grid = torch.full((15,), float("nan"), device=device)
        fn = lib.get_kernel_function("grid2")

        def block(fn=fn, grid=grid):
            fn.start_encoding()
            fn.set_arg_tensor(0, grid)
            fn.dispatch([5, 3], [4, 2])

        fn.run_command_block(block)
        results.append((out.cpu(), grid.cpu()))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(results[0][0], 3 * x - 1)
