"""rope_qk: q's and k's rope with the same tables become one mpsk.rope_qk, one kernel launch."""

import torch
import torch.nn as nn
from helpers import TOLERANCES, kernel_counts, launched_variants

import mps_inductor_ext as mpsk

B, HQ, HK, S, D = 2, 4, 2, 5, 8


def rotate_half(x):
    return torch.cat((-x[..., x.shape[-1] // 2:], x[..., : x.shape[-1] // 2]), dim=-1)


def rope(x, cos, sin):
    return x * cos + rotate_half(x) * sin


class TwoLayers(nn.Module):
    """HF's shape of things: the tables computed once and shared by every layer's q and k (GQA);
    layer 2 rotates layer 1's outputs, so pairing q of one layer with k of another would show."""

    def forward(self, q, k, cos, sin):
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        q1, k1 = rope(q, cos, sin), rope(k, cos, sin)
        q2, k2 = rope(q1 * 2, cos, sin), rope(k1 - 1, cos, sin)
        return q1, k1, q2, k2


class PerHeadTables(nn.Module):
    """Tables that differ between heads (q and k with as many): each tensor keeps its own rope."""

    def forward(self, q, k, cos, sin):
        return rope(q, cos, sin), rope(k, cos, sin)


def inputs(seed=0, table=(B, S, D)):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, S, HQ, D, generator=g).transpose(1, 2)
    k = torch.randn(B, S, HK, D, generator=g).transpose(1, 2)
    return q, k, torch.randn(table, generator=g), torch.randn(table, generator=g)


def compiled(model, *args):
    mpsk.reset_counters()
    torch._dynamo.reset()
    with mpsk.config.patch(emulate_metal=True), launched_variants() as seen:
        got = torch.compile(model, backend="mpsk")(*args)
    return got, kernel_counts(seen)


def close(got, ref):
    for g, r in zip(got, ref, strict=True):
        torch.testing.assert_close(g, r, rtol=TOLERANCES[g.dtype], atol=TOLERANCES[g.dtype])


def test_q_and_k_of_each_layer_are_one_launch():
    args = inputs()
    got, launches = compiled(TwoLayers(), *args)
    assert mpsk.counters == {"rope_qk": 2}  # what the graph holds: each pair is one op
    assert launches == {"rope_qk_float": 2}
    close(got, TwoLayers()(*args))


def test_switched_off_each_tensor_keeps_its_launch():
    args = inputs()
    with mpsk.config.patch(patterns={"rope_qk": False}):
        got, launches = compiled(TwoLayers(), *args)
    assert mpsk.counters == {"rope": 4}
    assert launches == {"rope_float": 4}
    close(got, TwoLayers()(*args))


def test_per_head_tables_are_a_near_miss():
    q, _, cos, sin = inputs(1, table=(B, HQ, S, D))
    args = (q, q.flip(1) + 1, cos, sin)
    with mpsk.config.patch(emulate_metal=True):  # rope_qk pairs the mpsk.rope calls a Metal device gets
        report = mpsk.explain(PerHeadTables(), *args)
    near = [n.reason for g in report.graphs for n in g.near_misses if n.kind == "rope_qk"]
    assert len(near) == 1 and "differs between heads" in near[0], near
    got, launches = compiled(PerHeadTables(), *args)
    assert mpsk.counters == {"rope": 2}
    assert launches == {"rope_float": 2}
    close(got, PerHeadTables()(*args))


def test_training_gradients_match_eager():
    """Gradients of q, k and both tables through the fused op (the tables' summed over both tensors
    and both layers)."""
    args = [t.clone().requires_grad_() for t in inputs(2)]
    got, launches = compiled(TwoLayers(), *args)
    assert launches == {"rope_qk_float": 2} and mpsk.counters["rope_qk"] == 2
    ref_args = [t.detach().clone().requires_grad_() for t in args]
    ref = TwoLayers()(*ref_args)
    weights = [torch.randn(t.shape, generator=torch.Generator().manual_seed(3 + i)) for i, t in enumerate(ref)]
    with mpsk.config.patch(emulate_metal=True):
        torch.autograd.backward(got, weights)
    torch.autograd.backward(ref, weights)
    for a, r in zip(args, ref_args, strict=True):
        torch.testing.assert_close(a.grad, r.grad, rtol=1e-5, atol=1e-5)
