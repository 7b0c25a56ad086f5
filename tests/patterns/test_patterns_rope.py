"""RoPE patterns: the Llama / NeoX / Phi / GPT-J forms become mpsk.rope, and nothing else does."""

import pytest
import torch
import torch.nn as nn
from helpers import TOLERANCES

import mps_inductor_ext as mpsk

B, H, S = 2, 3, 5


def rotate_half(x):
    """transformers' Llama / NeoX rotate_half."""
    x1 = x[..., : x.shape[-1] // 2]
    x2 = x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


def rotate_every_two(x):
    """transformers' GPT-J rotate_every_two."""
    x1 = x[:, :, :, ::2]
    x2 = x[:, :, :, 1::2]
    x = torch.stack((-x2, x1), dim=-1)
    return x.flatten(-2)


class Llama(nn.Module):
    """apply_rotary_pos_emb of Llama: (B, S, D) tables unsqueezed over heads, q and k rotated."""

    def forward(self, q, k, cos, sin):
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        return (q * cos) + (rotate_half(q) * sin), (k * cos) + (rotate_half(k) * sin)


class FloatTwice(nn.Module):
    """ModernBERT's and ESM's form: `q.float()` written out once for each product, then cast back."""

    def forward(self, q, k, cos, sin):
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        q_embed = (q.float() * cos) + (rotate_half(q.float()) * sin)
        k_embed = (k.float() * cos) + (rotate_half(k.float()) * sin)
        return q_embed.to(q.dtype), k_embed.to(k.dtype)


class NeoXPartial(nn.Module):
    """GPT-NeoX / Phi / StableLM: the first R = cos.shape[-1] features rotate, the rest pass."""

    def forward(self, q, k, cos, sin):
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        rotary_dim = cos.shape[-1]
        q_rot, q_pass = q[..., :rotary_dim], q[..., rotary_dim:]
        k_rot, k_pass = k[..., :rotary_dim], k[..., rotary_dim:]
        q_embed = (q_rot * cos) + (rotate_half(q_rot) * sin)
        k_embed = (k_rot * cos) + (rotate_half(k_rot) * sin)
        return torch.cat([q_embed, q_pass], dim=-1), torch.cat([k_embed, k_pass], dim=-1)


class GPTJ(nn.Module):
    """GPT-J on (B, S, H, D), per-pair (B, S, R/2) tables repeat_interleave'd; partial when rotary_dim."""

    def __init__(self, rotary_dim=None):
        super().__init__()
        self.rotary_dim = rotary_dim

    @staticmethod
    def apply(t, sin, cos):
        sin = torch.repeat_interleave(sin[:, :, None, :], 2, 3)
        cos = torch.repeat_interleave(cos[:, :, None, :], 2, 3)
        return (t * cos) + (rotate_every_two(t) * sin)

    def forward(self, query, sincos):
        sin, cos = torch.split(sincos, sincos.shape[-1] // 2, dim=-1)
        if self.rotary_dim is None:
            return self.apply(query, sin, cos)
        q_rot, q_pass = query[:, :, :, : self.rotary_dim], query[:, :, :, self.rotary_dim :]
        return torch.cat([self.apply(q_rot, sin, cos), q_pass], dim=-1)


class Commuted(nn.Module):
    """Operands in the other order, halves by chunk: the same rotation."""

    def forward(self, q, cos, sin):
        x1, x2 = q.chunk(2, dim=-1)
        return sin * torch.cat((-x2, x1), dim=-1) + cos * q


def tables(d, rot=None, dtype=torch.float32):
    """HF's cos/sin: (B, S, R) from positions, cat(freqs, freqs) so both halves share a frequency."""
    rot = rot or d
    inv = 1.0 / (10000 ** (torch.arange(0, rot, 2).float() / rot))
    freqs = torch.arange(S).float()[:, None] * inv
    emb = torch.cat((freqs, freqs), dim=-1).expand(B, S, rot)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def gptj_sincos(rot):
    inv = 1.0 / (10000 ** (torch.arange(0, rot, 2).float() / rot))
    freqs = torch.arange(S).float()[:, None] * inv
    return torch.cat((freqs.sin(), freqs.cos()), dim=-1).expand(B, S, rot)


def run(model, *inputs, dtype=torch.float32, train=False, dynamic=None):
    torch.manual_seed(0)
    inputs = [t.to(dtype).requires_grad_(train and i == 0) for i, t in enumerate(inputs)]
    mpsk.reset_counters()
    torch._dynamo.reset()
    with mpsk.config.patch(emulate_metal=True):
        got = torch.compile(model, backend="mpsk", dynamic=dynamic)(*inputs)
    return got, model(*inputs), inputs


def close(got, ref):
    for g, r in zip(got if isinstance(got, tuple) else (got,), ref if isinstance(ref, tuple) else (ref,), strict=True):
        tol = TOLERANCES[g.dtype]
        assert g.dtype == r.dtype and g.shape == r.shape
        torch.testing.assert_close(g.float(), r.float(), rtol=tol, atol=tol)


def replaced(ropes):
    """The ops left after `ropes` rope replacements: q's and k's, with the same tables, are one rope_qk."""
    return {"rope_qk": 1} if ropes == 2 else {"rope": ropes}


def qk(d, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, H, S, d, generator=g), torch.randn(B, H, S, d, generator=g)


FORMS = {
    "llama": lambda dt: (Llama(), (*qk(8), *tables(8, dtype=dt)), 2),
    "neox_partial": lambda dt: (NeoXPartial(), (*qk(10), *tables(10, rot=4, dtype=dt)), 2),
    "gptj": lambda dt: (GPTJ(), (qk(8)[0].transpose(1, 2), gptj_sincos(8)), 1),
    "gptj_partial": lambda dt: (GPTJ(rotary_dim=4), (qk(10)[0].transpose(1, 2), gptj_sincos(4)), 1),
    "float_twice": lambda dt: (FloatTwice(), (*qk(8), *tables(8, dtype=dt)), 2),
    "commuted_chunk": lambda dt: (Commuted(), (qk(8)[0], *(t.unsqueeze(1) for t in tables(8, dtype=dt))), 1),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("form", list(FORMS))
def test_rope_forms(form, dtype):
    model, inputs, count = FORMS[form](dtype)
    got, ref, _ = run(model, *inputs, dtype=dtype)
    assert mpsk.counters == replaced(count)
    close(got, ref)


def test_sequence_length_marked_dynamic():
    q, k = qk(8)
    cos, sin = tables(8)
    for t, dim in ((q, 2), (k, 2), (cos, 1), (sin, 1)):
        torch._dynamo.mark_dynamic(t, dim)
    got, ref, _ = run(Llama(), q, k, cos, sin)
    assert mpsk.counters == replaced(2)
    close(got, ref)


def test_symbolic_head_dim_is_a_near_miss():
    """With every size dynamic, D // 2 halves are equal only if D is even, which no guard says."""
    q, k = qk(8)
    cos, sin = tables(8)
    with torch._dynamo.config.patch(assume_static_by_default=False):
        report = mpsk.explain(Llama(), q, k, cos, sin)
        got, ref, _ = run(Llama(), q, k, cos, sin)
    near = [n.reason for g in report.graphs for n in g.near_misses if n.kind == "rope"]
    assert len(near) == 2 and all("is not provably even" in r for r in near), near
    assert mpsk.counters == {}
    close(got, ref)


@pytest.mark.parametrize("form", ["llama", "neox_partial", "gptj_partial"])
def test_training_gradients_match_eager(form):
    model, inputs, count = FORMS[form](torch.float32)
    got, ref, (x, *_) = run(model, *inputs, train=True)
    assert mpsk.counters == replaced(count)
    got, ref = (got if isinstance(got, tuple) else (got,)), (ref if isinstance(ref, tuple) else (ref,))
    (g_compiled,) = torch.autograd.grad(sum(o.square().sum() for o in got), x)
    (g_eager,) = torch.autograd.grad(sum(o.square().sum() for o in ref), x)
    torch.testing.assert_close(g_compiled, g_eager, rtol=1e-5, atol=1e-5)


class RotatedReused(nn.Module):
    def forward(self, q, cos, sin):
        r = rotate_half(q)
        return q * cos + r * sin, r


class ThreeD(nn.Module):
    """(B*H, S, D): the op takes 4-D x."""

    def forward(self, q, cos, sin):
        return q * cos + rotate_half(q) * sin


class MixedDtypes(nn.Module):
    def forward(self, q, cos, sin):
        return q * cos.float() + rotate_half(q) * sin.float()


def test_mixed_dtypes_compute_in_the_promoted_dtype():
    """float16 q against float32 tables (autocast's form): the graph computes in float32, and so does
    the replacement, on q upcast exactly; the result is float32 as eager's."""
    q, cos, sin = qk(8)[0].half(), *(t.unsqueeze(1) for t in tables(8))
    got, ref, _ = run(MixedDtypes(), q, cos, sin, dtype=torch.float16)
    assert mpsk.counters == {"rope": 1}
    assert got.dtype == torch.float32
    close(got, ref)


@pytest.mark.parametrize(
    "model,inputs,dtype,reason",
    [
        (RotatedReused(), (qk(8)[0], *(t.unsqueeze(1) for t in tables(8))), torch.float32, "(r) is used elsewhere"),
        (Llama(), (*qk(8), *tables(8)), torch.float64, "float64 has no Metal kernel"),
        (ThreeD(), (torch.randn(6, S, 8), *(t[0] for t in tables(8))), torch.float32, "x has 3 dimensions"),
    ],
    ids=["reused", "float64", "3d"],
)
def test_near_misses_are_left_to_inductor_and_reported(model, inputs, dtype, reason):
    inputs = [t.to(dtype) for t in inputs]
    report = mpsk.explain(model, *inputs)
    assert not [r for g in report.graphs for r in g.replacements]
    near = [n for g in report.graphs for n in g.near_misses]
    assert any(n.kind == "rope" and reason in n.reason for n in near), near
    got, ref, _ = run(model, *inputs, dtype=dtype)
    assert mpsk.counters == {}
    close(got, ref) if dtype != torch.float64 else torch.testing.assert_close(got, ref)


class NotRope(nn.Module):
    """Looks close but is not a rotation: the slices are not the two halves, or x differs."""

    def forward(self, q, k, cos, sin):
        bad_halves = q * cos + torch.cat((-q[..., 4:], q[..., 4:]), dim=-1) * sin
        other_x = q * cos + rotate_half(k) * sin
        return bad_halves, other_x


def test_look_alikes_are_not_replaced():
    q, k = qk(8)
    cos, sin = (t.unsqueeze(1) for t in tables(8))
    got, ref, _ = run(NotRope(), q, k, cos, sin)
    assert mpsk.counters == {}
    close(got, ref)
