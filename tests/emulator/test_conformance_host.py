"""Conformance: what a host sets that torch.mps.compile_shader cannot, as emulator-only options,
so kernels from other projects run verbatim: function constants (MSL 5.8), host-sized
threadgroup memory (`[[threadgroup(k)]]`), and buffers bound by index with holes. On the `mps`
backend each option is a clear error naming what torch cannot do. Also: the C ABI the host and
a built library share, checked against a library."""

import pytest
import torch

from mps_inductor_ext.shaders import KernelError, compile_shader
from mps_inductor_ext.shaders.emulator import abi
from mps_inductor_ext.shaders.errors import UndefinedBehaviorWarning
from mps_inductor_ext.shaders.runtime import KernelFunction

H = "#include <metal_stdlib>\nusing namespace metal;\n"

CONSTANTS = (
    H
    + """
constant bool has_bias [[function_constant(0)]];
constant int repeat [[function_constant(1)]];
constant float scale [[function_constant(2)]];
constant bool bias_defined = is_function_constant_defined(has_bias);
kernel void fc(device float* out [[buffer(0)]], device const float* x [[buffer(1)]],
               device const float* bias [[buffer(2), function_constant(has_bias)]],
               uint i [[thread_position_in_grid]]) {
  float v = x[i];
  for (int r = 0; r < repeat; ++r) v *= scale;
  if (has_bias) v += bias[i];
  out[i] = v + (bias_defined ? 0.0f : 1000.0f);
}
"""
)


def _launch(fn, args: dict, threads: int, **kw) -> None:
    def block():
        fn.start_encoding()
        for idx, t in args.items():
            fn.set_arg_tensor(idx, t)
        fn.dispatch(threads, **kw)

    fn.run_command_block(block)


@pytest.fixture(scope="module")
def constants():
    return compile_shader(CONSTANTS, backend="cpu")


def test_function_constants_specialize_the_kernel(constants):
    x, b, out = torch.arange(8.0), torch.full((8,), 0.5), torch.zeros(8)
    fn = constants.get_kernel_function("fc", constants={"has_bias": True, "repeat": 2, 2: 3.0})
    _launch(fn, {0: out, 1: x, 2: b}, 8)
    assert torch.equal(out, x * 9 + 0.5)
    # Off, the optional buffer need not be bound; set by index or name alike.
    fn = constants.get_kernel_function("fc", constants={0: False, "repeat": 1, "scale": 2.0})
    _launch(fn, {0: out, 1: x}, 8)
    assert torch.equal(out, x * 2)


def test_unset_function_constant_is_an_error_naming_it(constants):
    fn = constants.get_kernel_function("fc", constants={"has_bias": False, "scale": 1.0})
    out = torch.zeros(8)
    never_set = r"function constant 'repeat' \(\[\[function_constant\(1\)\]\]\) was never set"
    with pytest.raises(KernelError, match=never_set):
        _launch(fn, {0: out, 1: torch.arange(8.0)}, 8)
    assert torch.equal(out, torch.zeros(8))


def test_is_function_constant_defined_sees_what_was_set(constants):
    out = torch.zeros(4)
    fn = constants.get_kernel_function("fc", constants={"repeat": 0, "scale": 1.0})
    with pytest.raises(KernelError, match="function constant 'has_bias'"):
        _launch(fn, {0: out, 1: torch.zeros(4)}, 4)


@pytest.mark.parametrize(
    "given,error,match",
    [
        ({"nope": 1}, ValueError, r"no function constant 'nope' in this source; it declares \['has_bias \(0\)'"),
        ({7: 1}, ValueError, "no function constant 7"),
        ({"repeat": 1.5}, TypeError, "function constant 'repeat' is a int, got float"),
        ({"has_bias": 1}, TypeError, "function constant 'has_bias' is a bool, got int"),
        ({"has_bias": True, 0: True}, ValueError, "given twice"),
        ([("repeat", 1)], TypeError, "constants must be a dict"),
    ],
)
def test_bad_function_constants_are_rejected(constants, given, error, match):
    with pytest.raises(error, match=match):
        constants.get_kernel_function("fc", constants=given)


def test_required_buffer_left_unbound_is_an_error(constants):
    fn = constants.get_kernel_function("fc", constants={"has_bias": True, "repeat": 1, "scale": 1.0})
    with pytest.raises(TypeError, match=r"takes buffers \[0, 1, 2\] but got arguments for \[0, 1\]"):
        _launch(fn, {0: torch.zeros(4), 1: torch.zeros(4)}, 4)


THREADGROUP = (
    H
    + """
kernel void reverse(device float* out [[buffer(0)]], device const float* x [[buffer(2)]],
                    threadgroup float* shared [[threadgroup(0)]], uint l [[thread_index_in_threadgroup]],
                    uint n [[threads_per_threadgroup]], uint i [[thread_position_in_grid]]) {
  shared[l] = x[i];
  threadgroup_barrier(mem_flags::mem_threadgroup);
  out[i] = shared[n - 1 - l];
}
kernel void overrun(device float* out [[buffer(0)]], threadgroup float* shared [[threadgroup(0)]],
                    uint l [[thread_index_in_threadgroup]]) {
  shared[l + 4] = 1.0f;
  out[l] = 0.0f;
}
"""
)


def test_host_sized_threadgroup_memory_and_buffer_holes():
    """[[threadgroup(0)]] sized by the host, buffers 0 and 2 bound by index (1 is a hole)."""
    lib = compile_shader(THREADGROUP, backend="cpu")
    x, out = torch.arange(8.0), torch.zeros(8)
    fn = lib.get_kernel_function("reverse")
    _launch(fn, {0: out, 2: x}, 8, group_size=4, threadgroup_memory={0: 16})
    assert torch.equal(out, torch.tensor([3.0, 2, 1, 0, 7, 6, 5, 4]))
    lib.reverse.dispatch({0: out, 2: x}, [8], [8], threadgroup_memory={0: 32})
    assert torch.equal(out, x.flip(0))


@pytest.mark.parametrize(
    "sizes,match",
    [
        (None, r"has \[\[threadgroup\(0\)\]\] memory: pass threadgroup_memory=\{0: nbytes\}"),
        ({0: 20}, "positive multiple of 16 bytes"),
        ({1: 16, 0: 16}, r"threadgroup_memory names \[1\]"),
        ({0: 40000}, "exceeds 32768"),
    ],
)
def test_bad_threadgroup_memory_sizes(sizes, match):
    lib = compile_shader(THREADGROUP, backend="cpu")
    with pytest.raises(ValueError, match=match):
        lib.reverse.dispatch({0: torch.zeros(4), 2: torch.zeros(4)}, [4], [4], threadgroup_memory=sizes)


def test_threadgroup_memory_overrun_is_caught():
    lib = compile_shader(THREADGROUP, backend="cpu")
    with pytest.raises(KernelError, match=r"past the end of threadgroup array '\[\[threadgroup\(0\)\]\]'"):
        lib.overrun.dispatch({0: torch.zeros(4)}, [4], [4], threadgroup_memory={0: 16})


def test_unbound_optional_buffer_touched_is_an_error():
    src = H + """
constant bool use_mask [[function_constant(0)]];
kernel void k(device float* out [[buffer(0)]], device const float* mask [[buffer(1), function_constant(use_mask)]],
              uint i [[thread_position_in_grid]]) {
  out[i] = mask[i];   // reads the buffer whatever the constant says: a bug
}
"""
    fn = compile_shader(src, backend="cpu").get_kernel_function("k", constants={"use_mask": False})
    out = torch.zeros(4)
    with pytest.raises(KernelError, match="faulted"):
        _launch(fn, {0: out}, 4)
    assert torch.equal(out, torch.zeros(4))


class _NoMetal:
    """Stands in for torch's kernel object: the mps path must refuse before calling it."""

    def __call__(self, *args, **kwargs):
        raise AssertionError("torch's convenience call must not be reached")


@pytest.mark.parametrize("case", ["holes", "threadgroup_memory"])
def test_mps_backend_refuses_what_torch_cannot_do(case):
    fn = KernelFunction("k", _NoMetal(), "mps")

    def block():
        fn.start_encoding()
        if case == "holes":
            fn.set_arg_tensor(0, torch.zeros(1))
            fn.set_arg_tensor(2, torch.zeros(1))
            fn.dispatch(1)
        else:
            fn.set_arg_tensor(0, torch.zeros(1))
            fn.dispatch(1, threadgroup_memory={0: 16})

    with pytest.raises(NotImplementedError, match="torch.mps.compile_shader binds arguments by position"):
        fn.run_command_block(block)


def test_reading_an_inactive_lane_is_poisoned_and_reported():
    """A shuffle from a lane that returned is undefined in Metal: poisoned here, with a warning."""
    src = H + """
kernel void k(device float* out [[buffer(0)]], uint lane [[thread_index_in_simdgroup]]) {
  if (lane >= 16) return;
  out[lane] = simd_shuffle_down(float(lane), 8);
}
"""
    out = torch.zeros(16)
    inactive = r"simd_shuffle_down \(line 6\): lane 8 read lane 16, which is inactive"
    with pytest.warns(UndefinedBehaviorWarning, match=inactive):
        compile_shader(src, backend="cpu").k(out, threads=32)
    assert torch.equal(out[:8], torch.arange(8, 16, dtype=torch.float32))
    assert out[8:].isnan().all(), "inactive lanes read as poison (NaN)"


def test_abi_numbers_match_a_built_library():
    lib = compile_shader(H + "kernel void k(device float* o [[buffer(0)]]) { o[0] = 1; }", backend="cpu")
    dll = lib._lib._dll
    assert abi.mismatches(dll) == []


def test_an_abi_mismatch_is_reported(monkeypatch):
    lib = compile_shader(H + "kernel void k(device float* o [[buffer(0)]]) { o[0] = 2; }", backend="cpu")
    monkeypatch.setattr(abi, "SIMD_WIDTH", 64)
    assert abi.mismatches(lib._lib._dll) == ["SIMD_WIDTH: runtime 32, host 64"]
