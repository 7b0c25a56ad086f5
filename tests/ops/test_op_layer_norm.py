"""mpsk::layer_norm: the Metal kernel (emulated) against F.layer_norm in fp64."""

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_close_dtype, launched_variants

import mps_inductor_ext  # noqa: F401  (registers torch.ops.mpsk)
from mps_inductor_ext import config
from mps_inductor_ext.config import NormPolicy
from mps_inductor_ext.ops.common import poisoned_outputs

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def reference(x, w, b, eps):
    wd = None if w is None else w.double()
    bd = None if b is None else b.double()
    return F.layer_norm(x.double(), (x.shape[-1],), wd, bd, eps).to(x.dtype)


def metal(*args):
    with config.patch(emulate_metal=True), poisoned_outputs():
        return torch.ops.mpsk.layer_norm(*args)


def gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cols", [1, 5, 64, 130, 4096, 5000])
def test_matches_reference(dtype, cols):
    x = torch.randn(3, cols, generator=gen(cols)).to(dtype)
    w = torch.randn(cols, generator=gen(cols + 1)).to(dtype)
    b = torch.randn(cols, generator=gen(cols + 2)).to(dtype)
    assert_close_dtype(metal(x, w, b, 1e-5), reference(x, w, b, 1e-5))


@pytest.mark.parametrize("with_weight,with_bias", [(False, False), (True, False), (False, True)])
def test_optional_affine(with_weight, with_bias):
    x = torch.randn(2, 3, 48, generator=gen(0))
    w = torch.randn(48, generator=gen(1)) if with_weight else None
    b = torch.randn(48, generator=gen(2)) if with_bias else None
    assert_close_dtype(metal(x, w, b, 1e-5), reference(x, w, b, 1e-5))


def test_offset_mean_is_stable():
    """A large common offset: E[x^2] - mean^2 would be off by O(1) in fp32.

    Inputs near 1e4 carry fp32 steps of 1e-3, so 1e-3 is the bar (torch's own fp32
    layer_norm is off by 5e-4 on this input).
    """
    x = 1e4 + torch.randn(2, 512, generator=gen(3))
    assert_close_dtype(metal(x, None, None, 1e-5), reference(x, None, None, 1e-5), tol=1e-3)


@pytest.mark.parametrize("cols", [1000, 20000])
def test_looped_form(cols):
    x = torch.randn(2, cols, generator=gen(4))
    w = torch.randn(cols, generator=gen(5))
    with config.patch(norm=NormPolicy(threads_per_row=32)), launched_variants() as variants:
        got = metal(x, w, None, 1e-5)
    assert [v.defines["NREG"] for v in variants] == ["0"]  # the looped form ran
    assert_close_dtype(got, reference(x, w, None, 1e-5))


def test_storage_offset_and_noncontiguous_inputs():
    base = torch.randn(5, 37, generator=gen(6))
    sliced = base[1:, 5:]
    assert_close_dtype(metal(sliced, None, None, 1e-5), reference(sliced, None, None, 1e-5))
    transposed = torch.randn(32, 3, generator=gen(7)).t()
    assert_close_dtype(metal(transposed, None, None, 1e-5), reference(transposed, None, None, 1e-5))


def test_empty_input():
    assert metal(torch.randn(2, 0, 8), None, None, 1e-5).shape == (2, 0, 8)


@pytest.mark.parametrize(
    "args,error,match",
    [
        ((torch.tensor(1.0), None, None, 1e-5), ValueError, "input needs at least 1"),
        ((torch.randn(2, 4), None, torch.randn(3), 1e-5), ValueError, "bias has 3 elements"),
        ((torch.randn(2, 4), torch.randn(4).double(), None, 1e-5), TypeError, "weight is torch.float64"),
        ((torch.randn(2, 4).long(), None, None, 1e-5), TypeError, "input must be float32"),
        ((torch.randn(2, 4), None, None, float("inf")), ValueError, "eps must be a finite"),
    ],
)
def test_bad_input(args, error, match):
    with pytest.raises(error, match=match):
        metal(*args)


def test_opcheck():
    for args in [
        (torch.randn(3, 8), torch.randn(8), torch.randn(8), 1e-5),
        (torch.randn(2, 3, 8), None, None, 1e-5),
        (torch.randn(4, 16), torch.randn(16), None, 1e-6),
    ]:
        torch.library.opcheck(torch.ops.mpsk.layer_norm.default, args)


def test_gradcheck_double():
    x = torch.randn(3, 6, dtype=torch.float64, requires_grad=True, generator=gen(11))
    w = torch.randn(6, dtype=torch.float64, requires_grad=True, generator=gen(12))
    b = torch.randn(6, dtype=torch.float64, requires_grad=True, generator=gen(13))
    assert torch.autograd.gradcheck(lambda *a: torch.ops.mpsk.layer_norm(*a, 1e-5), (x, w, b))
    assert torch.autograd.gradcheck(lambda a: torch.ops.mpsk.layer_norm(a, None, None, 1e-5), (x,))
