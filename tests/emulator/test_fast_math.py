"""The emulator's fast-math mode (MPSK_EMULATOR_FAST_MATH, or torch's PYTORCH_MPS_FAST_MATH): kernel
source compiles with clang's fast math, as torch compiles Metal with MTLMathModeFast on a Mac. The
knob bites: the `-inf` guards the kernels used to have give NaN under it."""

import pytest
import torch

from mps_inductor_ext.shaders import compile_shader
from mps_inductor_ext.shaders.emulator import toolchain
from mps_inductor_ext.shaders.emulator.library import (
    FAST_MATH_VARIABLE,
    TORCH_FAST_MATH_VARIABLE,
    fast_math_enabled,
)
from mps_inductor_ext.shaders.errors import KernelError

# The guard softmax.metal and attention.metal had before their finite sentinels.
OLD_GUARDS = """
#include <metal_stdlib>
using namespace metal;
kernel void guards(device float* out [[buffer(0)]], const device float* x [[buffer(1)]],
                   uint i [[thread_position_in_grid]]) {
  const float v = x[0], m = x[1];
  out[0] = v == -numeric_limits<float>::infinity() ? 0.0f : exp(v - m);
  out[1] = isfinite(m) ? 1.0f : 0.0f;
}
"""

OUT_OF_BOUNDS = """
#include <metal_stdlib>
using namespace metal;
kernel void oob(device float* out [[buffer(0)]], uint i [[thread_position_in_grid]]) {
  out[i + 1] = exp(float(i));
}
"""


@pytest.fixture
def no_fast_math_variables(monkeypatch):
    monkeypatch.delenv(FAST_MATH_VARIABLE, raising=False)
    monkeypatch.delenv(TORCH_FAST_MATH_VARIABLE, raising=False)
    return monkeypatch


def run_guards() -> torch.Tensor:
    out = torch.full((2,), 7.0)
    compile_shader(OLD_GUARDS, backend="cpu").guards(out, torch.tensor([float("-inf"), float("-inf")]), threads=1)
    return out


def test_old_guards_hold_in_precise_math(no_fast_math_variables):
    assert run_guards().tolist() == [0.0, 0.0]


def test_old_guards_break_under_fast_math(no_fast_math_variables):
    """exp(-inf - -inf) is NaN once `v == -inf` folds to false; isfinite(-inf) folds to true."""
    no_fast_math_variables.setenv(FAST_MATH_VARIABLE, "1")
    out = run_guards()
    assert out[0].isnan() and out[1] == 1.0


def test_torch_variable_turns_it_on_and_ours_decides(no_fast_math_variables):
    mp = no_fast_math_variables
    assert not fast_math_enabled()
    mp.setenv(TORCH_FAST_MATH_VARIABLE, "1")  # torch's variable, as on a Mac
    assert fast_math_enabled() and run_guards()[0].isnan()
    mp.setenv(FAST_MATH_VARIABLE, "0")  # the emulator's own variable wins
    assert not fast_math_enabled() and run_guards().tolist() == [0.0, 0.0]
    mp.setenv(TORCH_FAST_MATH_VARIABLE, "0")
    mp.delenv(FAST_MATH_VARIABLE)
    assert not fast_math_enabled()


def test_fast_math_is_part_of_the_cache_key():
    assert toolchain.library_path(OLD_GUARDS) != toolchain.library_path(OLD_GUARDS, fast_math=True)
    assert toolchain.library_path(OLD_GUARDS, {"A": 1}, True) == toolchain.library_path(OLD_GUARDS, {"A": 1}, True)


def test_the_runtime_checks_stay_on_under_fast_math(no_fast_math_variables):
    no_fast_math_variables.setenv(FAST_MATH_VARIABLE, "1")
    out = torch.zeros(4)
    with pytest.raises(KernelError, match="out of bounds|outside"):
        compile_shader(OUT_OF_BOUNDS, backend="cpu").oob(out, threads=4)
    assert (out == 0).all()
