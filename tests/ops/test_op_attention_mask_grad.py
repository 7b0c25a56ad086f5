"""mpsk::attention's gradient with respect to an additive mask that requires grad (T5's learned
relative position bias reaches attention as such a mask), against PyTorch's SDPA autograd."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import mps_inductor_ext as mpsk


@pytest.mark.parametrize("mask_shape", [(1, 4, 5, 7), (2, 1, 5, 7), (5, 7)], ids=str)
def test_an_additive_mask_gets_its_gradient(mask_shape):
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, 5, 8, generator=gen, requires_grad=True)
    k = torch.randn(2, 2, 7, 8, generator=gen, requires_grad=True)
    v = torch.randn(2, 2, 7, 8, generator=gen, requires_grad=True)
    bias = torch.randn(mask_shape, generator=gen, requires_grad=True)
    grad_out = torch.randn(2, 4, 5, 8, generator=gen)
    with mpsk.config.patch(emulate_metal=True):
        out = torch.ops.mpsk.attention(q, k, v, bias, 0.3)
    got = torch.autograd.grad(out, (q, k, v, bias), grad_out)
    ref_out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=0.3, enable_gqa=True)
    want = torch.autograd.grad(ref_out, (q, k, v, bias), grad_out)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    for name, g, w in zip(["q", "k", "v", "mask"], got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5, msg=name)
