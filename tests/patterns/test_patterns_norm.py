"""RMSNorm and LayerNorm patterns: each form people write is replaced, and nothing else is."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from helpers import TOLERANCES

import mps_inductor_ext as mpsk


class LlamaRMSNorm(nn.Module):
    """Hugging Face Llama's form: upcast, mean of squares, rsqrt, cast back, weight."""

    def __init__(self, d, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(d))
        self.eps = eps

    def forward(self, x):
        dt = x.dtype
        h = x.to(torch.float32)
        var = h.pow(2).mean(-1, keepdim=True)
        h = h * torch.rsqrt(var + self.eps)
        return self.weight * h.to(dt)


class GemmaRMSNorm(nn.Module):
    def __init__(self, d, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(0.1 * torch.randn(d))
        self.eps = eps

    def forward(self, x):
        h = x.float()
        out = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        out = out * (1.0 + self.weight.float())
        return out.type_as(x)


class T5RMSNorm(nn.Module):
    """T5's form (T5LayerNorm and its many copies): the variance of `x.to(float32)`, the product on the
    uncast x, then a cast to a half weight's dtype."""

    def __init__(self, d, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(d))
        self.eps = eps

    def forward(self, x):
        variance = x.to(torch.float32).pow(2).mean(-1, keepdim=True)
        x = x * torch.rsqrt(variance + self.eps)
        if self.weight.dtype in (torch.float16, torch.bfloat16):
            x = x.to(self.weight.dtype)
        return self.weight * x


class NoWeight(nn.Module):
    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5)


class QKNorm(nn.Module):
    """q/k-norm over the head dimension of (B, H, S, D)."""

    def __init__(self):
        super().__init__()
        self.q_norm, self.k_norm = nn.RMSNorm(8, eps=1e-6), LlamaRMSNorm(8)

    def forward(self, q, k):
        return self.q_norm(q), self.k_norm(k)


def run(model, *inputs, dtype=torch.float32, emulate=True, train=False):
    torch.manual_seed(0)
    model = model.to(dtype)
    inputs = [t.to(dtype).requires_grad_(train) for t in inputs]
    mpsk.reset_counters()
    torch._dynamo.reset()
    with mpsk.config.patch(emulate_metal=emulate):
        got = torch.compile(model, backend="mpsk")(*inputs)
    return got, model(*inputs), inputs


def close(got, ref):
    for g, r in zip(got if isinstance(got, tuple) else (got,), ref if isinstance(ref, tuple) else (ref,), strict=True):
        tol = TOLERANCES[g.dtype]
        torch.testing.assert_close(g.float(), r.float(), rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize(
    "model",
    [LlamaRMSNorm(32), GemmaRMSNorm(32), T5RMSNorm(32), nn.RMSNorm(32, eps=1e-5), NoWeight()],
    ids=["llama", "gemma", "t5", "nn.RMSNorm", "no_weight"],
)
def test_rms_norm_forms(model, dtype):
    got, ref, _ = run(model, torch.randn(2, 5, 32), dtype=dtype)
    assert mpsk.counters == {"rms_norm": 1}
    close(got, ref)


class FunctionalNoEps(nn.Module):
    def forward(self, x):
        return F.rms_norm(x, (16,))


def test_functional_rms_norm_without_eps_uses_the_dtype_epsilon():
    got, ref, _ = run(FunctionalNoEps(), torch.randn(3, 16))
    assert mpsk.counters == {"rms_norm": 1}
    close(got, ref)


def test_qk_norm_over_the_head_dimension():
    got, ref, _ = run(QKNorm(), torch.randn(1, 2, 4, 8), torch.randn(1, 2, 4, 8))
    assert mpsk.counters == {"rms_norm": 2}
    close(got, ref)


def test_layer_norm():
    model = nn.Sequential(nn.Linear(24, 24), nn.LayerNorm(24), nn.Linear(24, 24), nn.LayerNorm(24, bias=False))
    got, ref, _ = run(model, torch.randn(2, 3, 24))
    assert mpsk.counters == {"layer_norm": 2}
    close(got, ref)


def test_training_gradients_match_eager():
    model = nn.Sequential(LlamaRMSNorm(16), nn.Linear(16, 16), nn.LayerNorm(16))
    got, ref, (x,) = run(model, torch.randn(2, 4, 16), train=True)
    assert mpsk.counters == {"rms_norm": 1, "layer_norm": 1}
    (g_compiled,) = torch.autograd.grad(got.square().sum(), x)
    (g_eager,) = torch.autograd.grad(ref.square().sum(), x)
    torch.testing.assert_close(g_compiled, g_eager, rtol=1e-4, atol=1e-4)


class MeanOverDim1(nn.Module):
    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(1, keepdim=True) + 1e-6)


class IntermediateReused(nn.Module):
    def forward(self, x):
        var = x.pow(2).mean(-1, keepdim=True)
        return x * torch.rsqrt(var + 1e-6), var


@pytest.mark.parametrize(
    "model,inputs,dtype,reason",
    [
        (MeanOverDim1(), (torch.randn(2, 3, 8),), torch.float32, "not over the last dimension"),
        (IntermediateReused(), (torch.randn(2, 8),), torch.float32, "used elsewhere"),
        (LlamaRMSNorm(8), (torch.randn(2, 8),), torch.float64, "float64 has no Metal kernel"),
        (nn.LayerNorm([4, 8]), (torch.randn(2, 4, 8),), torch.float32, "more than the last dimension"),
    ],
    ids=["mean_dim1", "reused", "float64", "two_dim_layer_norm"],
)
def test_near_misses_are_left_to_inductor_and_reported(model, inputs, dtype, reason):
    report = mpsk.explain(model.to(dtype), *[t.to(dtype) for t in inputs])
    assert not [r for g in report.graphs for r in g.replacements]
    near = [n for g in report.graphs for n in g.near_misses]
    assert any(reason in n.reason for n in near), near
    got, ref, _ = run(model, *inputs, dtype=dtype)
    assert mpsk.counters == {}
    # The float64 case is still HF's form, which computes in float32: float32's tolerance applies.
    tol = TOLERANCES[torch.float32 if dtype == torch.float64 else dtype]
    torch.testing.assert_close(got, ref, rtol=tol, atol=tol)


def test_switched_off_pattern_is_a_near_miss():
    with mpsk.config.patch(patterns={"rms_norm": False}):
        got, ref, _ = run(LlamaRMSNorm(8), torch.randn(2, 8))
        assert mpsk.counters == {}
        report = mpsk.explain(LlamaRMSNorm(8), torch.randn(2, 8))
    near = [n for g in report.graphs for n in g.near_misses]
    assert any("switched off" in n.reason for n in near)
    close(got, ref)


def test_without_metal_nothing_is_replaced_and_results_hold():
    got, ref, _ = run(LlamaRMSNorm(8), torch.randn(2, 8), emulate=False)
    assert mpsk.counters == {}
    close(got, ref)
