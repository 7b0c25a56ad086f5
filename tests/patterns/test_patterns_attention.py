"""Attention patterns: SDPA and eager attention in the forms people write are replaced by
mpsk.attention (run on the Metal emulator), and places the op cannot serve are near misses."""

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from helpers import op_tolerances

import mps_inductor_ext as mpsk

TOL = op_tolerances("attention")  # the attention op's tolerances


def repeat_kv(x, n_rep):
    """Hugging Face's repeat_kv."""
    b, h, s, d = x.shape
    if n_rep == 1:
        return x
    return x[:, :, None, :, :].expand(b, h, n_rep, s, d).reshape(b, h * n_rep, s, d)


class Sdpa(nn.Module):
    def __init__(self, **kwargs):
        super().__init__()
        self.kwargs = kwargs

    def forward(self, q, k, v, mask=None):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, **self.kwargs)


class SdpaRepeatKV(nn.Module):
    """HF's sdpa path off MPS when a mask is given: k/v repeated to q's heads, no enable_gqa."""

    def forward(self, q, k, v, mask):
        n = q.shape[1] // k.shape[1]
        return torch.nn.functional.scaled_dot_product_attention(q, repeat_kv(k, n), repeat_kv(v, n), mask, 0.0)


class LlamaEager(nn.Module):
    """transformers' llama/mistral eager_attention_forward (5.23), with HF's mask slice."""

    def forward(self, q, k, v, mask=None):
        n = q.shape[1] // k.shape[1]
        k, v = repeat_kv(k, n), repeat_kv(v, n)
        w = torch.matmul(q, k.transpose(2, 3)) * q.shape[-1] ** -0.5
        if mask is not None:
            w = w + mask[:, :, :, : k.shape[-2]]
        w = nn.functional.softmax(w, dim=-1, dtype=torch.float32).to(q.dtype)
        w = nn.functional.dropout(w, p=0.0, training=self.training)
        return torch.matmul(w, v)


class Gpt2Eager(nn.Module):
    """transformers' gpt2 eager_attention_forward: plain softmax, .type(value.dtype), nn.Dropout."""

    def __init__(self, p=0.0):
        super().__init__()
        self.drop = nn.Dropout(p)

    def forward(self, q, k, v, mask):
        w = (q @ k.transpose(-1, -2)) / math.sqrt(q.size(-1))
        w = mask + w
        w = nn.functional.softmax(w, dim=-1).type(v.dtype)
        return self.drop(w) @ v


class Unscaled(nn.Module):
    def forward(self, q, k, v):
        return torch.matmul(q, torch.transpose(k, -2, -1)).softmax(-1).matmul(v)


def positional_mask(sq, skv, window=None, q_offset=0, dtype=torch.float32):
    """HF masking_utils' form: causal (and sliding-window) comparisons of position aranges, made additive."""
    q_idx = (torch.arange(sq) + q_offset)[None, None, :, None]
    kv_idx = (torch.arange(skv) + 0)[None, None, None, :]
    keep = q_idx.new_ones((), dtype=torch.bool)
    if window is not None:
        keep = keep & (kv_idx > q_idx - window)
    keep = (keep & (kv_idx <= q_idx)).expand(1, -1, sq, skv)
    return keep, torch.where(keep, torch.zeros(()), torch.finfo(dtype).min)


class MistralEager(LlamaEager):
    """Eager attention with Mistral's causal sliding-window mask built inside the graph."""

    def __init__(self, window=3, q_offset=0):
        super().__init__()
        self.window, self.q_offset = window, q_offset

    def forward(self, q, k, v):
        _, additive = positional_mask(q.shape[2], k.shape[2], self.window, self.q_offset)
        return super().forward(q, k, v, additive)


class MistralSdpa(nn.Module):
    def forward(self, q, k, v):
        keep, _ = positional_mask(q.shape[2], k.shape[2], 3)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=keep, enable_gqa=True)


class WeightsReturned(LlamaEager):
    """output_attentions: the weights leave the graph, so the fused op cannot serve them."""

    def forward(self, q, k, v):
        w = torch.matmul(q, k.transpose(2, 3)) * 0.25
        w = nn.functional.softmax(w, dim=-1, dtype=torch.float32).to(q.dtype)
        return torch.matmul(w, v), w


class DropoutEager(LlamaEager):
    def forward(self, q, k, v):
        w = torch.matmul(q, k.transpose(2, 3)) * 0.25
        w = F.dropout(F.softmax(w, dim=-1), p=0.5, training=self.training)
        return torch.matmul(w, v)


def qkv(b=2, hq=4, hkv=2, sq=5, skv=5, d=16, dv=None, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, hq, sq, d, generator=g).to(dtype), torch.randn(b, hkv, skv, d, generator=g).to(dtype),
            torch.randn(b, hkv, skv, dv or d, generator=g).to(dtype))


def run(model, *inputs, train=False, **compile_kwargs):
    """(compiled output, eager output, inputs), the compiled model running the Metal kernels emulated."""
    inputs = [t.requires_grad_(train) if t.is_floating_point() else t for t in inputs]
    model.train(train)
    mpsk.reset_counters()
    torch._dynamo.reset()
    with mpsk.config.patch(emulate_metal=True):
        got = torch.compile(model, backend="mpsk", **compile_kwargs)(*inputs)
    return got, model(*inputs), inputs


def close(got, ref):
    for g, r in zip(got if isinstance(got, tuple) else (got,), ref if isinstance(ref, tuple) else (ref,), strict=True):
        tol = TOL[g.dtype]
        torch.testing.assert_close(g.float(), r.float(), rtol=tol, atol=tol)


def replacements(model, *inputs):
    with mpsk.config.patch(emulate_metal=True):
        report = mpsk.explain(model, *inputs)
    return [r for g in report.graphs for r in g.replacements], [n for g in report.graphs for n in g.near_misses]


g = torch.Generator().manual_seed(1)
BOOL_MASK = torch.rand(2, 1, 5, 5, generator=g) > 0.3
FLOAT_MASK = torch.randn(5, 5, generator=g)  # broadcast over batch and heads
HEAD_BIAS = torch.randn(4, 1, 5, generator=g)  # per head, broadcast over queries
HF_MASK = torch.randn(2, 1, 5, 8, generator=g)  # longer than the keys: HF slices it


@pytest.mark.parametrize(
    "model,hkv,mask",
    [
        (Sdpa(), 4, None),
        (Sdpa(is_causal=True), 4, None),
        (Sdpa(scale=0.2), 4, BOOL_MASK),
        (Sdpa(), 4, FLOAT_MASK),
        (Sdpa(enable_gqa=True, is_causal=True), 2, None),
        (Sdpa(enable_gqa=True), 1, HEAD_BIAS),
        (SdpaRepeatKV(), 2, BOOL_MASK),
        (LlamaEager(), 2, HF_MASK),
        (LlamaEager(), 4, None),
        (Gpt2Eager(), 4, FLOAT_MASK),
        (Unscaled(), 1, None),
    ],
    ids=["sdpa", "causal", "scale_bool_mask", "float_mask_2d", "gqa_causal", "mqa_head_bias", "sdpa_repeat_kv",
         "llama_eager_gqa_mask", "llama_eager", "gpt2_eager", "unscaled_method_softmax"],
)
def test_attention_forms(model, hkv, mask):
    inputs = [*qkv(hkv=hkv)] + ([mask] if mask is not None else [])
    got, ref, _ = run(model, *inputs)
    assert mpsk.counters == {"attention": 1}
    close(got, ref)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("model", [LlamaEager(), Sdpa(enable_gqa=True, is_causal=True)], ids=["eager", "sdpa"])
def test_half_precision(model, dtype):
    got, ref, _ = run(model, *qkv(dtype=dtype))
    assert mpsk.counters == {"attention": 1}
    assert got.dtype == dtype
    close(got, ref)


def test_gqa_repeat_is_folded_into_the_op():
    """The op reads the un-repeated k/v (2 heads for q's 4), and the repeat dies with the match."""
    from mps_inductor_ext.patterns import apply

    nodes = []

    def capture(gm, example_inputs):
        with mpsk.config.patch(emulate_metal=True):
            apply(gm.graph)
        nodes.extend(n for n in gm.graph.nodes if n.op in ("call_function", "call_method"))
        gm.recompile()
        return gm

    torch._dynamo.reset()
    torch.compile(LlamaEager(), backend=capture)(*qkv(hkv=2))
    [op] = [n for n in nodes if n.target is torch.ops.mpsk.attention.default]
    assert [a.meta["example_value"].shape[1] for a in op.args[:3]] == [4, 2, 2]
    assert not [n for n in nodes if n.target in ("expand", "reshape", "softmax", "transpose")]


@pytest.mark.parametrize("model", [MistralEager(), MistralSdpa()], ids=["eager", "sdpa"])
def test_positional_sliding_window_mask_folds_into_window(model):
    reps, _ = replacements(model, *qkv(sq=7, skv=7))
    [detail] = [r.detail for r in reps]
    assert detail.endswith("(mask folded: is_causal=True, window=3)"), detail
    got, ref, _ = run(model, *qkv(sq=7, skv=7))
    assert mpsk.counters == {"attention": 1}
    close(got, ref)


def test_mask_with_shifted_query_positions_is_passed_as_a_tensor():
    """q positions offset from k positions (a KV cache) do not match the op's top-left window: keep the mask."""
    model = MistralEager(window=3, q_offset=2)
    reps, _ = replacements(model, *qkv(sq=4, skv=6))
    assert [r.detail for r in reps] == ["eager attention"]
    got, ref, _ = run(model, *qkv(sq=4, skv=6))
    assert mpsk.counters == {"attention": 1}
    close(got, ref)


@pytest.mark.parametrize("model", [LlamaEager(), Sdpa(is_causal=True, enable_gqa=True)], ids=["eager", "sdpa"])
def test_training_gradients_match_eager(model):
    """model.train() with dropout p=0: still replaced, and the op's backward gives eager's gradients."""
    mask = [HF_MASK[..., :5].clone()] if isinstance(model, LlamaEager) else []
    got, ref, inputs = run(model, *qkv(), *mask, train=True)
    assert mpsk.counters == {"attention": 1}
    close(got, ref)
    q, k, v = inputs[:3]
    g_compiled = torch.autograd.grad(got.square().sum(), (q, k, v))
    g_eager = torch.autograd.grad(ref.square().sum(), (q, k, v))
    for a, b in zip(g_compiled, g_eager, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "model,inputs,train,reason",
    [
        (DropoutEager(), qkv(hkv=4), True, "dropout p=0.5 > 0 in training"),
        (Sdpa(dropout_p=0.5), qkv(hkv=4), False, "dropout p=0.5 > 0"),
        (Sdpa(), qkv(hkv=4, d=288), False, "head dim 288"),
        (WeightsReturned(), qkv(hkv=4), False, "attention weights"),
        (LlamaEager(), qkv(dtype=torch.float64), False, "float64 has no Metal kernel"),
        (Sdpa(is_causal=True), [t[:, 0] for t in qkv(hkv=4)], False, "the op takes (batch, heads, seq, head dim)"),
    ],
    ids=["eager_dropout_training", "sdpa_dropout", "head_dim_288", "weights_returned", "float64", "3d_inputs"],
)
def test_near_misses_are_left_to_inductor_and_reported(model, inputs, train, reason):
    model.train(train)
    reps, near = replacements(model, *inputs)
    assert not [r for r in reps if r.kind == "attention"]
    assert any(n.kind == "attention" and reason in n.reason for n in near), near
    model.train(train)
    mpsk.reset_counters()
    torch._dynamo.reset()
    # fallback_random: Inductor draws dropout masks with ATen's generator, as eager does
    with mpsk.config.patch(emulate_metal=True):
        compiled = torch.compile(model, backend="mpsk", options={"fallback_random": True})
        torch.manual_seed(0)
        got = compiled(*inputs)
    torch.manual_seed(0)
    ref = model(*inputs)
    assert "attention" not in mpsk.counters
    if inputs[0].dtype == torch.float64:
        torch.testing.assert_close(got, ref)
    else:
        close(got, ref)


def test_dropout_in_eval_is_replaced():
    """The same module with p > 0 is a no-op dropout in eval: replaced."""
    got, ref, _ = run(DropoutEager(), *qkv(hkv=4))
    assert mpsk.counters == {"attention": 1}
    close(got, ref)


class FusedMistralEager(MistralEager):
    """q, k and v sliced from one tensor, as a model derives them from one hidden state: one length symbol."""

    def forward(self, x):
        return super().forward(x[:, :4], x[:, 4:6], x[:, 6:])


@pytest.mark.parametrize("model,n_inputs", [(FusedMistralEager(), 1), (MistralSdpa(), 3)], ids=["eager", "sdpa"])
def test_dynamic_sequence_length_compiles_once(model, n_inputs):
    """A length marked dynamic: one graph for two lengths, the window still folded."""

    def inputs(s):
        ts = [torch.randn(2, 8, s, 16, generator=torch.Generator().manual_seed(s))] if n_inputs == 1 else \
            list(qkv(sq=s, skv=s, seed=s))
        for t in ts:
            torch._dynamo.mark_dynamic(t, 2)
        return ts

    reps, _ = replacements(model, *inputs(6))
    [detail] = [r.detail for r in reps]
    assert detail.endswith("(mask folded: is_causal=True, window=3)"), detail
    frames = []

    def counting(gm, example_inputs):
        frames.append(gm)
        return mpsk.backend.mpsk_backend(gm, example_inputs)

    mpsk.reset_counters()
    torch._dynamo.reset()
    compiled = torch.compile(model, backend=counting)
    with mpsk.config.patch(emulate_metal=True):
        for s in (6, 9):
            ts = inputs(s)
            close(compiled(*ts), model(*ts))
    assert len(frames) == 1
    assert mpsk.counters == {"attention": 1}
