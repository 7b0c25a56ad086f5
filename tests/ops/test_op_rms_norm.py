"""mpsk::rms_norm: the Metal kernel (emulated) against explicit fp64 math."""

import pytest
import torch
from helpers import assert_close_dtype, launched_variants

import mps_inductor_ext  # noqa: F401  (registers torch.ops.mpsk)
from mps_inductor_ext import config
from mps_inductor_ext.config import NormPolicy
from mps_inductor_ext.ops.common import poisoned_outputs

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def reference(x, w, eps, offset=0.0):
    xd = x.double()
    y = xd * torch.rsqrt(xd.pow(2).mean(-1, keepdim=True) + eps)
    if w is not None:
        y = y * (w.double() + offset)
    return y.to(x.dtype)


def metal(*args, **kwargs):
    with config.patch(emulate_metal=True), poisoned_outputs():
        return torch.ops.mpsk.rms_norm(*args, **kwargs)


def gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cols", [1, 3, 7, 64, 130, 4096, 5000])
def test_matches_reference(dtype, cols):
    x = torch.randn(3, cols, generator=gen(cols)).to(dtype)
    w = torch.randn(cols, generator=gen(cols + 1)).to(dtype)
    assert_close_dtype(metal(x, w, 1e-6), reference(x, w, 1e-6))


@pytest.mark.parametrize("dtype", DTYPES)
def test_gemma_offset_and_no_weight(dtype):
    x = torch.randn(2, 5, 96, generator=gen(0)).to(dtype)
    w = (0.1 * torch.randn(96, generator=gen(1))).to(dtype)
    assert_close_dtype(metal(x, w, 1e-6, 1.0), reference(x, w, 1e-6, 1.0))
    assert_close_dtype(metal(x, None, 1e-5), reference(x, None, 1e-5))


@pytest.mark.parametrize("cols", [1000, 20000])
def test_looped_form_for_rows_longer_than_one_pass(cols):
    """32 threads per row make 1000 columns exceed the register form; 20000 exceeds it at any width."""
    x = torch.randn(2, cols, generator=gen(7))
    w = torch.randn(cols, generator=gen(8))
    with config.patch(norm=NormPolicy(threads_per_row=32)), launched_variants() as variants:
        got = metal(x, w, 1e-6)
    assert [v.defines["NREG"] for v in variants] == ["0"]  # the looped form ran
    assert_close_dtype(got, reference(x, w, 1e-6))


def test_scalar_loads_and_vector_loads_agree():
    x = torch.randn(4, 256, generator=gen(3))
    w = torch.randn(256, generator=gen(4))
    with config.patch(norm=NormPolicy(vector_width=1)), launched_variants() as variants:
        scalar = metal(x, w, 1e-6)
    assert_close_dtype(scalar, reference(x, w, 1e-6))
    with launched_variants() as vector_variants:
        vector = metal(x, w, 1e-6)
    assert_close_dtype(vector, reference(x, w, 1e-6))
    assert [v.defines["VEC"] for v in variants + vector_variants] == ["1", "4"]


def test_storage_offset_and_noncontiguous_inputs():
    base = torch.randn(6, 67, generator=gen(5))
    w = torch.randn(64, generator=gen(6))
    sliced = base[1:, 3:]  # storage offset, row stride 67, not 4-aligned
    assert_close_dtype(metal(sliced, w, 1e-6), reference(sliced, w, 1e-6))
    transposed = torch.randn(64, 5, generator=gen(9)).t()
    assert_close_dtype(metal(transposed, w, 1e-6), reference(transposed, w, 1e-6))


def test_large_magnitudes_stay_finite():
    x = torch.full((2, 300), 1e4)
    assert_close_dtype(metal(x, None, 1e-6), reference(x, None, 1e-6))


def test_empty_input():
    x = torch.randn(0, 16)
    assert metal(x, torch.ones(16), 1e-6).shape == (0, 16)


def test_aten_path_without_emulation():
    x = torch.randn(3, 10, generator=gen(2))
    w = torch.randn(10, generator=gen(3))
    with config.patch(emulate_metal=False):
        got = torch.ops.mpsk.rms_norm(x, w, 1e-6)
    assert_close_dtype(got, reference(x, w, 1e-6))


@pytest.mark.parametrize(
    "args,error,match",
    [
        ((torch.tensor(1.0), None, 1e-6), ValueError, "input needs at least 1"),
        ((torch.randn(2, 4), torch.randn(5), 1e-6), ValueError, "weight has 5 elements"),
        ((torch.randn(2, 4), torch.randn(2, 2), 1e-6), ValueError, "weight must have 1 dimensions"),
        ((torch.randn(2, 4), torch.randn(4).half(), 1e-6), TypeError, "weight is torch.float16"),
        ((torch.randint(0, 3, (2, 4)), None, 1e-6), TypeError, "input must be float32"),
        ((torch.randn(2, 4), None, -1.0), ValueError, "eps must be non-negative"),
        ((torch.randn(2, 4), None, float("nan")), ValueError, "eps must be a finite"),
        ((torch.randn(2, 4), torch.randn(4, device="meta"), 1e-6), ValueError, "weight is on meta"),
    ],
)
def test_bad_input(args, error, match):
    with pytest.raises(error, match=match):
        metal(*args)


def test_opcheck():
    for x, w, offset in [
        (torch.randn(3, 8), torch.randn(8), 0.0),
        (torch.randn(2, 3, 8), None, 0.0),
        (torch.randn(4, 16), torch.randn(16), 1.0),
    ]:
        torch.library.opcheck(torch.ops.mpsk.rms_norm.default, (x, w, 1e-6, offset))


def test_gradcheck_double():
    x = torch.randn(3, 6, dtype=torch.float64, requires_grad=True, generator=gen(11))
    w = torch.randn(6, dtype=torch.float64, requires_grad=True, generator=gen(12))
    assert torch.autograd.gradcheck(lambda a, b: torch.ops.mpsk.rms_norm(a, b, 1e-6, 0.5), (x, w))
    assert torch.autograd.gradcheck(lambda a: torch.ops.mpsk.rms_norm(a, None, 1e-6), (x,))
