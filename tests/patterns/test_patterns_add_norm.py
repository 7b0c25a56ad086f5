"""A residual add feeding a norm becomes add_rms_norm / add_layer_norm, for every norm form the plain
patterns take; the first norm of a pre-norm stack (no add before it) stays a plain norm."""

import pytest
import torch
import torch.nn as nn
from helpers import TOLERANCES
from test_patterns_norm import GemmaRMSNorm, LlamaRMSNorm

import mps_inductor_ext as mpsk

D = 32


class PreNormStack(nn.Module):
    """A pre-norm transformer's residual stream, with linears for blocks:

        y = n0(x)                       # follows the input (the embedding): a plain norm
        h = x + f(y);  y = n1(h)        # h is the next residual: fused
        h = h + g(y);  return nf(h)     # the final norm; h has no other use: fused too
    """

    def __init__(self, norm):
        super().__init__()
        self.n0, self.n1, self.nf = norm(), norm(), norm()
        self.f, self.g = nn.Linear(D, D), nn.Linear(D, D)

    def forward(self, x):
        h = x + self.f(self.n0(x))
        h = h + self.g(self.n1(h))
        return self.nf(h)


NORMS = {
    "llama": (lambda: LlamaRMSNorm(D), "rms_norm"),
    "gemma": (lambda: GemmaRMSNorm(D), "rms_norm"),
    "nn.RMSNorm": (lambda: nn.RMSNorm(D), "rms_norm"),
    "nn.LayerNorm": (lambda: nn.LayerNorm(D), "layer_norm"),
}


def compile_and_run(model, *inputs, emulate=True):
    mpsk.reset_counters()
    torch._dynamo.reset()
    with mpsk.config.patch(emulate_metal=emulate):
        return torch.compile(model, backend="mpsk")(*inputs)


def grads(out, x, model):
    return torch.autograd.grad(out.square().sum(), (x, *model.parameters()))


# Llama's written-out form and nn.LayerNorm on every run; Gemma's offset and nn.RMSNorm (the same
# finder paths as the plain norm's tests) in the slow set, for time.
@pytest.mark.parametrize("name", [pytest.param(n, marks=[pytest.mark.slow] if n in ("gemma", "nn.RMSNorm") else [])
                                  for n in NORMS])
def test_pre_norm_stack_outputs_and_gradients(name):
    make, kind = NORMS[name]
    torch.manual_seed(0)
    model = PreNormStack(make)
    x = torch.randn(2, 5, D, requires_grad=True)
    got = compile_and_run(model, x)
    assert mpsk.counters == {f"add_{kind}": 2, kind: 1}
    ref = model(x)
    tol = TOLERANCES[torch.float32]
    torch.testing.assert_close(got, ref, rtol=tol, atol=tol)
    for g, r in zip(grads(got, x, model), grads(ref, x, model), strict=True):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-4)


class Broadcast(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = nn.RMSNorm(D)

    def forward(self, x, bias):
        return self.norm(x + bias)


class SumReadFirst(nn.Module):
    """The sum's other use comes before the norm in the program, where the fused op cannot serve it."""

    def __init__(self):
        super().__init__()
        self.norm = nn.RMSNorm(D)

    def forward(self, x, r):
        h = x + r
        doubled = h * 2
        return self.norm(h), doubled


class Alpha(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = nn.RMSNorm(D)

    def forward(self, x, r):
        return self.norm(torch.add(x, r, alpha=2))


@pytest.mark.parametrize(("model", "second", "reason"), [
    (Broadcast(), torch.randn(D), "the residual add broadcasts"),
    (SumReadFirst(), torch.randn(3, D), "used before the norm"),
    (Alpha(), torch.randn(3, D), None),
], ids=["broadcast", "sum_read_first", "alpha"])
def test_adds_the_fused_op_cannot_take_leave_a_plain_norm(model, second, reason):
    x = torch.randn(3, D)
    report = mpsk.explain(model, x, second)
    near = [n.reason for g in report.graphs for n in g.near_misses]
    assert (reason is None and not near) or any(reason in n for n in near), near
    got = compile_and_run(model, x, second)
    assert mpsk.counters == {"rms_norm": 1}
    ref = model(x, second)
    for g, r in zip(got if isinstance(got, tuple) else (got,), ref if isinstance(ref, tuple) else (ref,), strict=True):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-5)


def test_switched_off_the_plain_norm_takes_it():
    torch.manual_seed(0)
    model = PreNormStack(lambda: nn.RMSNorm(D))
    with mpsk.config.patch(patterns={"add_rms_norm": False}):
        compile_and_run(model, torch.randn(2, D))
    assert mpsk.counters == {"rms_norm": 3}


def test_torch_export_graph_casts_of_the_sum_are_looked_through():
    """torch.export keeps Llama's `h.to(torch.float32)` of a float32 sum as a node, and later readers
    of the sum (the next residual add) read that cast: the fused op serves them too."""
    from mps_inductor_ext import patterns
    from mps_inductor_ext.patterns.fx import drop_metadata_checks

    torch.manual_seed(0)
    model = PreNormStack(lambda: LlamaRMSNorm(D)).eval()
    graph = torch.export.export(model, (torch.randn(2, D),)).graph_module.graph
    drop_metadata_checks(graph)
    with mpsk.config.patch(emulate_metal=True):
        assert dict(patterns.apply(graph)) == {"add_rms_norm": 2, "rms_norm": 1}
    graph.lint()
