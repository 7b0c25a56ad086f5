"""mpsk::attention's logit softcap (Gemma 2): scores s -> cap * tanh(s / cap) before the mask, in the
prefill, decode and split-decode kernels, and its gradient, against the math written out as Gemma 2's
eager attention writes it (computed here in float64 with PyTorch's autograd)."""

from __future__ import annotations

import pytest
import torch

import mps_inductor_ext as mpsk
from mps_inductor_ext.config import AttentionPolicy

CAP = 2.5


def gemma2_math(q, k, v, mask, scale, cap, causal):
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    s = q @ k.transpose(2, 3) * scale
    s = torch.tanh(s / cap) * cap
    if mask is not None:
        s = s + mask
    if causal:
        s = s.masked_fill(torch.ones(s.shape[-2:], dtype=torch.bool).triu(1), float("-inf"))
    return torch.softmax(s, -1) @ v


def inputs(sq, skv, masked, grad=False):
    g = torch.Generator().manual_seed(0)
    # Scores large enough that the cap bends them (|s| up to ~3 cap), so a kernel without it differs.
    q = (3 * torch.randn(1, 4, sq, 16, generator=g)).requires_grad_(grad)
    k = (3 * torch.randn(1, 2, skv, 16, generator=g)).requires_grad_(grad)
    v = torch.randn(1, 2, skv, 16, generator=g).requires_grad_(grad)
    mask = torch.randn(1, 1, sq, skv, generator=g) if masked else None
    return q, k, v, mask


@pytest.mark.parametrize("sq,skv", [(9, 9), (1, 9), (2, 40)], ids=["prefill", "decode", "split_decode"])
@pytest.mark.parametrize("masked", [False, True], ids=["no_mask", "additive_mask"])
def test_softcapped_scores_match_the_written_out_math(sq, skv, masked):
    q, k, v, mask = inputs(sq, skv, masked)
    causal = sq == skv
    with mpsk.config.patch(emulate_metal=True, attention=AttentionPolicy(split_kv_above=16, partition_size=32)):
        got = torch.ops.mpsk.attention(q, k, v, mask, 0.25, causal, -1, CAP)
        plain = torch.ops.mpsk.attention(q, k, v, mask, 0.25, causal, -1)
    want = gemma2_math(*(t.double() if t is not None else None for t in (q, k, v, mask)), 0.25, CAP, causal)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(plain.double(), want, rtol=1e-3, atol=1e-3)  # the cap matters at these scores


def test_softcap_gradients_match_autograd_of_the_written_out_math():
    q, k, v, mask = inputs(5, 7, True, grad=True)
    mask.requires_grad_(True)
    grad_out = torch.randn(1, 4, 5, 16, generator=torch.Generator().manual_seed(3))
    with mpsk.config.patch(emulate_metal=True):
        out = torch.ops.mpsk.attention(q, k, v, mask, 0.25, False, -1, CAP)
    got = torch.autograd.grad(out, (q, k, v, mask), grad_out)
    leaves = [t.detach().double().requires_grad_(True) for t in (q, k, v, mask)]
    want = torch.autograd.grad(gemma2_math(*leaves, 0.25, CAP, False), leaves, grad_out.double())
    for name, g, w in zip("qkvm", got, want, strict=True):
        torch.testing.assert_close(g.double(), w, rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.parametrize("bad", [-1.0, float("inf"), float("nan")])
def test_a_bad_softcap_is_refused(bad):
    q, k, v, _ = inputs(2, 2, False)
    with pytest.raises(ValueError, match="softcap"):
        torch.ops.mpsk.attention(q, k, v, None, None, False, -1, bad)
