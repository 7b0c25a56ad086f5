import os

import pytest
import torch

from mps_inductor_ext import emulated_mps
from mps_inductor_ext.shaders import compile_shader

# A real Mac's MPS. is_built() first: asking is_available() of a CPU build would make libtorch read
# its MPS hooks before the emulated device (tests/mps_device) can register its own.
HAS_MPS = torch.backends.mps.is_built() and torch.backends.mps.is_available() and not emulated_mps.installed()
requires_mps = pytest.mark.skipif(not HAS_MPS, reason="no MPS device on this machine")

# tests/mps_device run on the emulated mps device, which changes the whole process (is_available()
# turns True): they run in a process of their own (test_mps_device_suite.py starts it).
collect_ignore = [] if os.environ.get("MPSK_EMULATE_MPS") == "1" else ["mps_device"]


@pytest.fixture
def emulate():
    """Compiles Metal source on the CPU emulator (strict: the lint for this project's kernels)."""

    def build(source: str, strict: bool = False):
        return compile_shader(source, backend="cpu", strict=strict)

    return build


@pytest.fixture(params=[False, True], ids=["precise", "fast_math"])
def math_mode(request, monkeypatch):
    """Runs a test with the emulator compiling kernels in Metal's default (precise) math and in fast
    math (MPSK_EMULATOR_FAST_MATH, as torch under PYTORCH_MPS_FAST_MATH=1 on a Mac)."""
    from mps_inductor_ext.shaders.emulator.library import FAST_MATH_VARIABLE

    monkeypatch.setenv(FAST_MATH_VARIABLE, "1" if request.param else "0")
    return request.param


def nan_like(t: torch.Tensor) -> torch.Tensor:
    """An output buffer poisoned with NaN, so elements a kernel never writes are caught."""
    return torch.full_like(t, float("nan"))


# The kernels-and-ops issue's tolerances (rtol = atol) per dtype.
TOLERANCES = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def assert_close_dtype(got: torch.Tensor, ref: torch.Tensor, tol: float | None = None) -> None:
    """Compares in float32 with the dtype's tolerance; NaN in `got` (an unwritten element) fails."""
    tol = TOLERANCES[got.dtype] if tol is None else tol
    assert got.dtype == ref.dtype, (got.dtype, ref.dtype)
    torch.testing.assert_close(got.float(), ref.float(), rtol=tol, atol=tol)
