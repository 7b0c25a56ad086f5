"""Forms from Hugging Face models the patterns used to miss (issue 18), one module each: Cohere's
written-out LayerNorm, DeepSeek V3's interleaved-pair RoPE and V2's complex-number RoPE. Each is
written here as the modeling file writes it; each has a near miss that says why it is declined. And
Gemma 2's eager attention with its logit softcap."""

import pytest
import torch
import torch.nn as nn
from helpers import assert_close_dtype

import mps_inductor_ext as mpsk


class CohereLayerNorm(nn.Module):
    """Command-R / Aya: mean and variance in fp32, `h - mean` written twice, an fp32 weight, no bias."""

    def __init__(self, d, eps=1e-5):
        super().__init__()
        self.weight = nn.Parameter(1 + 0.1 * torch.randn(d))
        self.variance_epsilon = eps

    def forward(self, x):
        dt = x.dtype
        h = x.to(torch.float32)
        mean = h.mean(-1, keepdim=True)
        variance = (h - mean).pow(2).mean(-1, keepdim=True)
        h = (h - mean) * torch.rsqrt(variance + self.variance_epsilon)
        h = self.weight.to(torch.float32) * h
        return h.to(dt)


class CenteredOnceWithBias(nn.Module):
    """The same with `x - mean` taken once, no upcast, and a bias."""

    def __init__(self, d):
        super().__init__()
        self.weight, self.bias = nn.Parameter(torch.randn(d)), nn.Parameter(torch.randn(d))

    def forward(self, x):
        c = x - x.mean(-1, keepdim=True)
        return c * torch.rsqrt(c.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight + self.bias


class CenteredReused(nn.Module):
    def forward(self, x):
        c = x - x.mean(-1, keepdim=True)
        return c * torch.rsqrt(c.pow(2).mean(-1, keepdim=True) + 1e-6), c


def v3_rope(q, k, cos, sin):
    """DeepSeek V3's apply_rotary_pos_emb_interleave: per-pair tables, pairs in, halves out."""
    cos = cos[..., : cos.shape[-1] // 2].unsqueeze(1)
    sin = sin[..., : sin.shape[-1] // 2].unsqueeze(1)
    q1, q2 = q[..., 0::2], q[..., 1::2]
    k1, k2 = k[..., 0::2], k[..., 1::2]
    return (torch.cat([q1 * cos - q2 * sin, q2 * cos + q1 * sin], dim=-1),
            torch.cat([k1 * cos - k2 * sin, k2 * cos + k1 * sin], dim=-1))


def v3_reused(q, k, cos, sin):
    c, s = cos[..., : cos.shape[-1] // 2].unsqueeze(1), sin[..., : sin.shape[-1] // 2].unsqueeze(1)
    q1, q2 = q[..., 0::2], q[..., 1::2]
    first = q1 * c - q2 * s
    return torch.cat([first, q2 * c + q1 * s], dim=-1), first


def v3_wrong_sign(q, k, cos, sin):
    c, s = cos[..., : cos.shape[-1] // 2].unsqueeze(1), sin[..., : sin.shape[-1] // 2].unsqueeze(1)
    q1, q2 = q[..., 0::2], q[..., 1::2]
    return torch.cat([q1 * c - q2 * s, q2 * c - q1 * s], dim=-1)


def v2_rope(q, k, freqs_cis):
    """DeepSeek V2's apply_rotary_emb: complex pairs times complex tables."""
    qc = torch.view_as_complex(q.float().reshape(*q.shape[:-1], -1, 2))
    kc = torch.view_as_complex(k.float().reshape(*k.shape[:-1], -1, 2))
    freqs_cis = freqs_cis.unsqueeze(1)
    return (torch.view_as_real(qc * freqs_cis).flatten(3).type_as(q),
            torch.view_as_real(kc * freqs_cis).flatten(3).type_as(k))


def v2_reused(q, k, freqs_cis):
    qc = torch.view_as_complex(q.float().reshape(*q.shape[:-1], -1, 2))
    prod = qc * freqs_cis.unsqueeze(1)
    return torch.view_as_real(prod).flatten(3), prod.abs()


def tables(dtype=torch.float32):
    """HF's cos/sin, cat(freqs, freqs) over (B, S, D), and V2's complex polar(1, freqs) over (B, S, D/2)."""
    g = torch.Generator().manual_seed(2)
    freqs = torch.rand(2, 5, 4, generator=g) * 6
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype), torch.polar(torch.ones_like(freqs), freqs)


def qk(dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, 3, 5, 8, generator=g).to(dtype), torch.randn(2, 1, 5, 8, generator=g).to(dtype)


def run(fn, *inputs):
    torch._dynamo.reset()
    mpsk.reset_counters()
    with torch.no_grad(), mpsk.config.patch(emulate_metal=True):
        got = torch.compile(fn, backend="mpsk")(*inputs)
    return got, fn(*inputs)


def close(got, ref):
    for g, r in zip(got if isinstance(got, tuple) else (got,), ref if isinstance(ref, tuple) else (ref,), strict=True):
        assert_close_dtype(g, r)


def near_misses(fn, *inputs):
    report = mpsk.explain(fn, *inputs)
    assert not [r for g in report.graphs for r in g.replacements]
    return [n.reason for g in report.graphs for n in g.near_misses]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("build", [CohereLayerNorm, CenteredOnceWithBias], ids=["cohere", "centered_once_bias"])
def test_written_out_layer_norm(build, dtype):
    torch.manual_seed(0)
    model = build(32).to(dtype)
    got, ref = run(model, torch.randn(2, 5, 32).to(dtype))
    assert mpsk.counters == {"layer_norm": 1}
    close(got, ref)


def test_written_out_layer_norm_with_a_reused_intermediate_is_a_near_miss():
    reasons = near_misses(CenteredReused(), torch.randn(2, 8))
    assert any("used elsewhere" in r for r in reasons), reasons
    got, ref = run(CenteredReused(), torch.randn(2, 8))
    assert mpsk.counters == {"rms_norm": 1}  # what stays is an RMSNorm of the centered value, which is one
    close(got, ref)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_deepseek_v3_interleaved_rope(dtype):
    cos, sin, _ = tables(dtype)
    got, ref = run(v3_rope, *qk(dtype), cos, sin)
    assert mpsk.counters == {"rope": 2}
    close(got, ref)


def test_deepseek_v3_rope_with_mixed_dtypes_computes_in_the_promoted_dtype():
    cos, sin, _ = tables(torch.float32)
    got, ref = run(v3_rope, *qk(torch.bfloat16), cos, sin)
    assert mpsk.counters == {"rope": 2}
    assert got[0].dtype == torch.float32
    close(got, ref)


def test_deepseek_v3_lookalikes():
    cos, sin, _ = tables()
    reasons = near_misses(v3_reused, *qk(), cos, sin)
    assert any("used elsewhere" in r for r in reasons), reasons
    run(v3_wrong_sign, *qk(), cos, sin)
    assert mpsk.counters == {}  # not a rotation: not even a near miss


def test_deepseek_v2_complex_rope():
    *_, freqs_cis = tables()
    for dtype in (torch.float32, torch.bfloat16):
        got, ref = run(v2_rope, *qk(dtype), freqs_cis)
        assert mpsk.counters == {"rope": 2}
        close(got, ref)


def test_deepseek_v2_lookalikes():
    *_, freqs_cis = tables()
    reasons = near_misses(v2_reused, *qk(), freqs_cis)
    assert any("used elsewhere" in r for r in reasons), reasons
    reasons = near_misses(v2_rope, *qk(), freqs_cis.to(torch.complex128))
    assert any("float64 has no Metal kernel" in r or "complex128" in r for r in reasons), reasons


def gemma2_attention(q, k, v, mask, cap=50.0):
    """Gemma 2's eager_attention_forward (GQA by repeat, scale, softcap, mask, fp32 softmax)."""
    k, v = k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)
    w = torch.matmul(q, k.transpose(2, 3)) * 0.25
    w = w / cap
    w = torch.tanh(w)
    w = w * cap
    w = w + mask
    w = torch.softmax(w, dim=-1, dtype=torch.float32).to(q.dtype)
    return torch.matmul(w, v)


def capped_by_another_value(q, k, v, mask):
    k, v = k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)
    w = torch.tanh(torch.matmul(q, k.transpose(2, 3)) / 30.0) * 40.0
    return torch.matmul(torch.softmax(w + mask, dim=-1), v)


def attention_inputs():
    g = torch.Generator().manual_seed(4)
    q = 3 * torch.randn(1, 4, 6, 16, generator=g)
    k, v = 3 * torch.randn(1, 2, 6, 16, generator=g), torch.randn(1, 2, 6, 16, generator=g)
    return q, k, v, torch.randn(1, 1, 6, 6, generator=g)


@pytest.mark.parametrize("cap", [50.0, 2.0])
def test_gemma2_softcapped_eager_attention(cap):
    got, ref = run(lambda *a: gemma2_attention(*a, cap=cap), *attention_inputs())
    assert mpsk.counters == {"attention": 1}
    close(got, ref)


def test_a_tanh_that_is_not_a_softcap_is_left_alone():
    got, ref = run(capped_by_another_value, *attention_inputs())
    assert mpsk.counters == {"softmax": 1}  # not attention: the softmax alone
    close(got, ref)


def falcon_attention(q, k, v, mask):
    """Falcon's eager attention: the scores divided in place (`/=`), the mask added inside the softmax."""
    scores = q @ k.transpose(-1, -2)
    scores /= 4.0
    weights = torch.softmax(scores + mask, dim=-1, dtype=q.dtype)
    return weights @ v


def test_falcon_in_place_scaled_eager_attention():
    q, k, v, mask = attention_inputs()
    k, v = k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)
    got, ref = run(falcon_attention, q, k, v, mask)
    assert mpsk.counters == {"attention": 1}
    close(got, ref)


def t5_attention(q, k, v, bias, mask):
    """T5's eager_attention_forward: no scaling (1.0), the position bias, then the mask, added in turn."""
    w = torch.matmul(q, k.transpose(2, 3)) * 1.0
    w = w + bias
    w = w + mask
    return torch.matmul(torch.softmax(w, dim=-1), v)


def test_t5_bias_and_mask_added_in_two_steps():
    q, k, v, _ = attention_inputs()
    k, v = k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)
    g = torch.Generator().manual_seed(6)
    bias = torch.randn(1, 4, 6, 6, generator=g)
    hidden = torch.ones(6, 6, dtype=torch.bool).triu(1)
    mask = torch.zeros(1, 1, 6, 6).masked_fill(hidden, torch.finfo(torch.float32).min)
    got, ref = run(t5_attention, q, k, v, bias, mask)
    assert mpsk.counters == {"attention": 1}
    close(got, ref)
