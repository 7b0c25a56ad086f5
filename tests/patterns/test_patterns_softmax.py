"""softmax patterns: every spelling over the last dim becomes mpsk.softmax, upcasts fold, other dims stay."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from helpers import TOLERANCES

import mps_inductor_ext as mpsk


class Fn(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


FORMS = {
    "torch.softmax": lambda x: torch.softmax(x, -1),
    "F.softmax_kw": lambda x: F.softmax(x, dim=-1),
    "F.softmax_stacklevel": lambda x: F.softmax(x, 2, 3),
    "method": lambda x: x.softmax(-1),
    "method_kw": lambda x: x.softmax(dim=2),
    "nn.Softmax": nn.Softmax(dim=-1),
    "special": lambda x: torch.special.softmax(x, -1),
    "transposed_input": lambda x: x.transpose(-1, -2).softmax(-1),
    "torch.log_softmax": lambda x: torch.log_softmax(x, dim=-1),
    "F.log_softmax_stacklevel": lambda x: F.log_softmax(x, -1, _stacklevel=5),
    "nn.LogSoftmax": nn.LogSoftmax(-1),
    "method_log": lambda x: x.log_softmax(-1),
}


def run(model, *inputs, dtype=torch.float32, train=False):
    torch.manual_seed(0)
    inputs = [t.to(dtype).requires_grad_(train) for t in inputs]
    mpsk.reset_counters()
    torch._dynamo.reset()
    with mpsk.config.patch(emulate_metal=True):
        got = torch.compile(model, backend="mpsk")(*inputs)
    return got, model(*inputs), inputs


def close(got, ref):
    for g, r in zip(got if isinstance(got, tuple) else (got,), ref if isinstance(ref, tuple) else (ref,), strict=True):
        tol = TOLERANCES[g.dtype]
        assert g.dtype == r.dtype and g.shape == r.shape
        torch.testing.assert_close(g.float(), r.float(), rtol=tol, atol=tol)


def x3(seed=0):
    return 3 * torch.randn(2, 6, 10, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("form", list(FORMS))
def test_softmax_spellings(form, dtype):
    got, ref, _ = run(Fn(FORMS[form]), x3(), dtype=dtype)
    assert mpsk.counters == {"softmax": 1}
    close(got, ref)


def replacements(fn, *inputs):
    with mpsk.config.patch(emulate_metal=True):
        report = mpsk.explain(fn, *inputs)
    return [r for g in report.graphs for r in g.replacements]


UPCASTS = {
    "dtype_then_to": lambda x: F.softmax(x, dim=-1, dtype=torch.float32).to(x.dtype),
    "casts_around": lambda x: F.softmax(x.float(), dim=-1).type_as(x),
    "log_dtype_then_half": lambda x: torch.log_softmax(x, -1, torch.float32).half(),
}


@pytest.mark.parametrize("form", list(UPCASTS))
def test_upcast_and_cast_back_fold_into_one_op(form):
    """HF eager attention's upcast: one mpsk.softmax on the half input, rounding once like eager."""
    x = x3().half()
    [rep] = replacements(Fn(UPCASTS[form]), x)
    assert "folded" in rep.detail, rep
    got, ref, _ = run(Fn(UPCASTS[form]), x, dtype=torch.float16)
    assert mpsk.counters == {"softmax": 1}
    close(got, ref)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_lone_upcast_runs_the_op_on_the_upcast_input(dtype):
    """softmax(x16, dtype=float32) kept in float32: mpsk.softmax(x16.to(float32)), the same math."""
    fn = Fn(lambda x: (F.softmax(x, -1, dtype=torch.float32), torch.softmax(x, -1, dtype=torch.float32).to(x.dtype)))
    reps = replacements(fn, x3().to(dtype))
    assert sorted(r.detail for r in reps) == ["the float32 upcast and the cast back folded",
                                              "upcast to float32 before the kernel"]
    got, ref, _ = run(fn, x3(), dtype=dtype)
    assert mpsk.counters == {"softmax": 2}
    assert got[0].dtype == torch.float32
    close(got, ref)


def test_result_used_twice_still_replaced_once():
    """The float32 result is also used elsewhere: the cast back cannot fold, the softmax still goes."""
    fn = Fn(lambda x: (lambda p: (p.to(x.dtype), p.sum(-1)))(F.softmax(x, -1, dtype=torch.float32)))
    got, ref, _ = run(fn, x3(), dtype=torch.float16)
    assert mpsk.counters == {"softmax": 1}
    close(got, ref)


@pytest.mark.parametrize("log", [False, True])
def test_training_gradients_match_eager(log):
    model = nn.Sequential(nn.Linear(10, 10), nn.LogSoftmax(-1) if log else nn.Softmax(-1), nn.Linear(10, 4))
    got, ref, (x,) = run(model, x3(), train=True)
    assert mpsk.counters == {"softmax": 1}
    (g_compiled,) = torch.autograd.grad(got.square().sum(), x)
    (g_eager,) = torch.autograd.grad(ref.square().sum(), x)
    torch.testing.assert_close(g_compiled, g_eager, rtol=1e-5, atol=1e-5)


def test_training_through_the_folded_upcast():
    fn = Fn(UPCASTS["dtype_then_to"])
    got, ref, (x,) = run(fn, x3(), dtype=torch.float16, train=True)
    assert mpsk.counters == {"softmax": 1}
    w = torch.randn(got.shape, generator=torch.Generator().manual_seed(1)).half()
    (g_compiled,) = torch.autograd.grad((got * w).sum(), x)
    (g_eager,) = torch.autograd.grad((ref * w).sum(), x)
    torch.testing.assert_close(g_compiled.float(), g_eager.float(), rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize(
    "fn,dtype,reason",
    [
        (lambda x: F.softmax(x, dim=1), torch.float32, "softmax over dim 1, not the last: left to Inductor"),
        (lambda x: x.log_softmax(-2), torch.float32, "log_softmax over dim -2, not the last: left to Inductor"),
        (lambda x: torch.softmax(x, -1), torch.float64, "torch.float64 has no Metal kernel"),
        (lambda x: F.softmax(x, -1, dtype=torch.float16), torch.float32,
         "softmax computes in torch.float16 from a torch.float32 input"),
    ],
    ids=["dim1", "log_dim-2", "float64", "downcast"],
)
def test_near_misses_are_left_to_inductor_and_reported(fn, dtype, reason):
    x = x3().to(dtype)
    report = mpsk.explain(Fn(fn), x)
    assert not [r for g in report.graphs for r in g.replacements]
    near = [n for g in report.graphs for n in g.near_misses]
    assert any(n.kind == "softmax" and reason in n.reason for n in near), near
    got, ref, _ = run(Fn(fn), x, dtype=dtype)
    assert mpsk.counters == {}
    close(got, ref) if dtype != torch.float64 else torch.testing.assert_close(got, ref)
