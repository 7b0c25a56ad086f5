"""The two-output ops lower to one Metal launch writing both outputs, in the Python and C++ wrappers
(MpskMultiKernel): Inductor allocates y and h as buffers of their own, or h as the call's scratch when
the graph never reads it; no separate add kernel is left."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import TOLERANCES
from torch._inductor.utils import run_and_get_code

import mps_inductor_ext as mpsk

D = 64
TOL = TOLERANCES[torch.float32]


def both_used(x, r, w, b):
    h = x + r
    return F.rms_norm(h, (D,), w, 1e-6) * 2, h * 3


def h_unused(x, r, w, b):
    return F.layer_norm(x + r, (D,), w, b, 1e-5) * 2


def compiled(fn, args, cpp: bool):
    torch._dynamo.reset()
    mpsk.reset_counters()
    with mpsk.config.patch(emulate_metal=True), torch._inductor.config.patch(cpp_wrapper=cpp):
        out, code = run_and_get_code(torch.compile(fn, backend="mpsk"), *args)
    return out, "\n".join(code)


def inputs(rows=3):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(rows, D, generator=g), torch.randn(rows, D, generator=g), torch.randn(D, generator=g),
            torch.randn(D, generator=g)]


@pytest.mark.parametrize("cpp", [False, True], ids=["python", "cpp"])
def test_both_outputs_from_one_launch(cpp):
    args = inputs()
    (y, h3), code = compiled(both_used, args, cpp)
    assert mpsk.counters == {"add_rms_norm": 1}
    x, r, w, _ = args
    torch.testing.assert_close(h3, (x + r) * 3, rtol=0, atol=0)
    torch.testing.assert_close(y, F.rms_norm(x + r, (D,), w, 1e-6) * 2, rtol=TOL, atol=TOL)
    launch = "run_command_block(" if not cpp else "aoti_torch_mps_run_command_block("
    assert code.count(launch) == 1 and "add_rms_norm_float" in code
    assert "fused_add" not in code  # the add is inside the Metal kernel, not an Inductor kernel


@pytest.mark.parametrize("cpp", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["python", "cpp"])
def test_an_unused_sum_is_written_to_scratch(cpp):
    args = inputs()
    out, code = compiled(h_unused, args, cpp)
    assert mpsk.counters == {"add_layer_norm": 1}
    x, r, w, b = args
    torch.testing.assert_close(out, F.layer_norm(x + r, (D,), w, b, 1e-5) * 2, rtol=TOL, atol=TOL)
    # The kernel's h argument is bound to a buffer the call allocates for itself.
    assert ("buf0_h = torch.empty" in code) if not cpp else ("buf0_h_handle" in code)


def test_dynamic_rows():
    """A symbolic row count: the launch's grid is an expression the wrapper evaluates per call."""
    torch._dynamo.reset()
    args = inputs(7)
    with mpsk.config.patch(emulate_metal=True):
        fn = torch.compile(both_used, backend="mpsk", dynamic=True)
        fn(*inputs(5))
        y, h3 = fn(*args)
    x, r, w, _ = args
    torch.testing.assert_close(y, F.rms_norm(x + r, (D,), w, 1e-6) * 2, rtol=TOL, atol=TOL)
    torch.testing.assert_close(h3, (x + r) * 3, rtol=0, atol=0)
