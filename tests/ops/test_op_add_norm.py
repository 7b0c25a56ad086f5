"""mpsk::add_rms_norm and mpsk::add_layer_norm: one kernel (emulated) computing h = x + residual and
norm(h), against explicit fp64 math on h; h itself must be exactly the graph's sum in its dtype."""

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_close_dtype, kernel_counts, launched_variants

import mps_inductor_ext  # noqa: F401  (registers torch.ops.mpsk)
from mps_inductor_ext import config
from mps_inductor_ext.config import NormPolicy
from mps_inductor_ext.ops.common import poisoned_outputs


def gen(seed):
    return torch.Generator().manual_seed(seed)


def rms_reference(h, w, eps, offset=0.0):
    hd = h.double()
    y = hd * torch.rsqrt(hd.pow(2).mean(-1, keepdim=True) + eps)
    return (y if w is None else y * (w.double() + offset)).to(h.dtype)


def layer_reference(h, w, b, eps):
    return F.layer_norm(h.double(), (h.shape[-1],), None if w is None else w.double(),
                        None if b is None else b.double(), eps).to(h.dtype)


def metal(op, *args):
    with config.patch(emulate_metal=True), poisoned_outputs():
        return getattr(torch.ops.mpsk, op)(*args)


def inputs(shape, dtype, seed):
    x, r = (torch.randn(shape, generator=gen(seed + i)).to(dtype) for i in range(2))
    w, b = (torch.randn(shape[-1], generator=gen(seed + 2 + i)).to(dtype) for i in range(2))
    return x, r, w, b


# Each case compiles two kernels on the emulator, so the grid is a diagonal: every dtype, a row of
# scalar loads (7, 130: not a multiple of 4) and of vector loads (64).
CASES = [(torch.float32, 7), (torch.float16, 64), (torch.bfloat16, 130)]


@pytest.mark.parametrize(("dtype", "cols"), CASES, ids=[f"{d}-{c}".removeprefix("torch.") for d, c in CASES])
def test_both_outputs_match_reference(dtype, cols):
    x, r, w, b = inputs((3, cols), dtype, cols)
    h = x + r  # the graph's sum, rounded to dtype: the norm must see this, not the fp32 sum
    with launched_variants() as seen:
        y, h_rms = metal("add_rms_norm", x, r, w, 1e-6, 0.0)
        z, h_ln = metal("add_layer_norm", x, r, w, b, 1e-5)
    assert kernel_counts(seen) == {f"add_rms_norm_{_metal(dtype)}": 1, f"add_layer_norm_{_metal(dtype)}": 1}
    assert torch.equal(h_rms, h) and torch.equal(h_ln, h)
    assert_close_dtype(y, rms_reference(h, w, 1e-6))
    assert_close_dtype(z, layer_reference(h, w, b, 1e-5))


def _metal(dtype):
    return {torch.float32: "float", torch.float16: "half", torch.bfloat16: "bfloat"}[dtype]


def test_looped_form_reads_h_back():
    """32 threads per row put 1000 columns past the register form: later passes re-read h, which
    the first pass wrote (the only place the rounded sum exists), with 4-wide loads and stores."""
    x, r, w, b = inputs((2, 1000), torch.float16, 11)
    policy = NormPolicy(threads_per_row=32, vector_width=4)
    with config.patch(norm=policy), launched_variants() as seen:
        y, h = metal("add_rms_norm", x, r, w, 1e-6, 0.0)
        z, h2 = metal("add_layer_norm", x, r, w, b, 1e-5)
    assert {(v.defines["NREG"], v.defines["VEC"], v.defines["ADD_RESIDUAL"]) for v in seen} == \
        {("0", "4", "1")}
    assert torch.equal(h, x + r) and torch.equal(h2, x + r)
    assert_close_dtype(y, rms_reference(x + r, w, 1e-6))
    assert_close_dtype(z, layer_reference(x + r, w, b, 1e-5))


def test_offset_no_weight_and_strided_inputs():
    base = torch.randn(5, 67, generator=gen(3))
    x = base[1:, 3:]  # storage offset, row stride 67
    r = torch.randn(64, 4, generator=gen(4)).t()  # column stride 4: made contiguous by the op
    w = (0.1 * torch.randn(64, generator=gen(5)))
    y, h = metal("add_rms_norm", x, r, w, 1e-6, 1.0)
    assert torch.equal(h, x + r)
    assert_close_dtype(y, rms_reference(x + r, w, 1e-6, 1.0))
    z, _ = metal("add_layer_norm", x, r, None, None, 1e-5)
    assert_close_dtype(z, layer_reference(x + r, None, None, 1e-5))


def test_off_metal_is_the_reference():
    x, r, w, b = inputs((2, 3, 8), torch.float32, 20)
    y, h = torch.ops.mpsk.add_rms_norm(x, r, w, 1e-6, 0.0)
    assert torch.equal(h, x + r)
    assert_close_dtype(y, rms_reference(x + r, w, 1e-6))
    z, _ = torch.ops.mpsk.add_layer_norm(x, r, w, b, 1e-5)
    assert_close_dtype(z, layer_reference(x + r, w, b, 1e-5))


@pytest.mark.parametrize("op", ["add_rms_norm", "add_layer_norm"])
def test_gradients_are_atens(op):
    """Both outputs carry gradient: y's through the norm and h's straight to x and residual."""
    x, r, w, b = (t.double().requires_grad_() for t in inputs((3, 16), torch.float32, 30))
    gy, gh = torch.randn(3, 16, generator=gen(40)).double(), torch.randn(3, 16, generator=gen(41)).double()
    if op == "add_rms_norm":
        y, h = torch.ops.mpsk.add_rms_norm(x, r, w, 1e-6, 1.0)
        params = (x, r, w)
    else:
        y, h = torch.ops.mpsk.add_layer_norm(x, r, w, b, 1e-5)
        params = (x, r, w, b)
    got = torch.autograd.grad((y, h), params, (gy, gh))
    h_ref = x + r
    y_ref = (F.rms_norm(h_ref, (16,), w + 1.0, 1e-6) if op == "add_rms_norm"
             else F.layer_norm(h_ref, (16,), w, b, 1e-5))
    expected = torch.autograd.grad((y_ref, h_ref), params, (gy, gh))
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e)
    # Only y used: h's gradient is absent (None or zeros) and must not break the sum.
    (gx,) = torch.autograd.grad(torch.ops.mpsk.add_rms_norm(x, r, w, 1e-6, 1.0)[0].sum(), (x,))
    torch.testing.assert_close(gx, torch.autograd.grad(F.rms_norm(x + r, (16,), w + 1.0, 1e-6).sum(), (x,))[0])


def test_fake_outputs_are_contiguous_pairs():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x = torch.empty(2, 3, 8).transpose(0, 1)
        y, h = torch.ops.mpsk.add_layer_norm(x, torch.empty(3, 2, 8), None, None, 1e-5)
    assert y.shape == h.shape == (3, 2, 8) and y.is_contiguous() and h.is_contiguous()


@pytest.mark.parametrize(("args", "error", "message"), [
    ((torch.zeros(2, 8), torch.zeros(1, 8), None, 1e-6, 0.0), ValueError, "residual has shape"),
    ((torch.zeros(2, 8), torch.zeros(2, 8).half(), None, 1e-6, 0.0), TypeError, "residual is torch.float16"),
    ((torch.zeros(2, 8), torch.zeros(2, 8), torch.zeros(4), 1e-6, 0.0), ValueError, "weight has 4 elements"),
    ((torch.zeros(2, 8), torch.zeros(2, 8), None, -1.0, 0.0), ValueError, "eps must be non-negative"),
])
def test_bad_input_is_named(args, error, message):
    with pytest.raises(error, match=message):
        torch.ops.mpsk.add_rms_norm(*args)
