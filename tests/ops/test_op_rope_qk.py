"""mpsk::rope_qk: q and k rotated with the same tables in one launch (emulated), against fp64 rotary
math written out pair by pair, and its gradients against autograd through that math."""

import pytest
import torch
from helpers import assert_close_dtype, kernel_counts, launched_variants

import mps_inductor_ext  # noqa: F401  (registers torch.ops.mpsk)
from mps_inductor_ext import config
from mps_inductor_ext.config import RopePolicy
from mps_inductor_ext.ops.common import METAL_DTYPES, poisoned_outputs
from mps_inductor_ext.ops.operands import Operand
from mps_inductor_ext.ops.rope import rope_launch, rope_qk_launch
from mps_inductor_ext.shaders import ShaderLibrary

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
B, HQ, HK, S = 2, 4, 2, 5


def randn(*shape, seed, dtype=torch.float32):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def rotated(x, cos, sin, interleaved):
    """Pair (i0, i1) of the first R features -> (x0 c[i0] - x1 s[i0], x1 c[i1] + x0 s[i1]), in float64
    (differentiable: no in-place writes); the other features pass through."""
    rot = cos.shape[-1]
    xd, c, s = x.double(), cos.double(), sin.double()
    i0 = torch.arange(0, rot, 2) if interleaved else torch.arange(rot // 2)
    i1 = i0 + 1 if interleaved else i0 + rot // 2
    y0 = xd[..., i0] * c[..., i0] - xd[..., i1] * s[..., i0]
    y1 = xd[..., i1] * c[..., i1] + xd[..., i0] * s[..., i1]
    pairs = torch.stack((y0, y1), -1)  # (..., R/2, 2) in (i0, i1) order
    order = torch.cat((i0, i1)).argsort()
    rot_part = torch.cat((pairs[..., 0], pairs[..., 1]), -1)[..., order]
    return torch.cat((rot_part, xd[..., rot:]), -1)


def metal(q, k, cos, sin, interleaved=False, policy=None):
    changes = {"emulate_metal": True} | ({"rope": policy} if policy else {})
    with config.patch(**changes), poisoned_outputs(), launched_variants() as seen:
        out = torch.ops.mpsk.rope_qk(q, k, cos, sin, interleaved)
    assert kernel_counts(seen) == {f"rope_qk_{METAL_DTYPES[q.dtype]}": 1}  # one launch, the fused kernel
    return out


@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dim,rot,table", [(8, 8, (S, 8)), (10, 4, (B, 1, S, 4)), (6, 6, (1, 1, S, 6))])
def test_matches_reference_in_one_launch(dtype, interleaved, dim, rot, table):
    """GQA head counts, k as the usual (B, S, H, D) transpose at a storage offset, full and partial
    rotary; the tables are arbitrary values (not one real table), so a cos/sin or index mix-up shows."""
    q = randn(B, HQ, S, dim, seed=dim, dtype=dtype)
    k = randn(B, S, HK + 1, dim, seed=dim + 1, dtype=dtype)[:, :, 1:].transpose(1, 2)
    assert k.storage_offset() and not k.is_contiguous()
    cos, sin = randn(*table, seed=2, dtype=dtype), randn(*table, seed=3, dtype=dtype)
    q_out, k_out = metal(q, k, cos, sin, interleaved)
    assert q_out.is_contiguous() and k_out.is_contiguous()
    assert_close_dtype(q_out, rotated(q, cos, sin, interleaved).to(dtype))
    assert_close_dtype(k_out, rotated(k, cos, sin, interleaved).to(dtype))


def test_several_groups_and_no_k_heads_beyond_q():
    """126 threads in groups of 32 (a partial last one), and Hk > Hq."""
    q, k = randn(3, 1, 7, 9, seed=4), randn(3, 3, 7, 9, seed=5)
    cos, sin = randn(7, 6, seed=6), randn(7, 6, seed=7)
    q_out, k_out = metal(q, k, cos, sin, False, RopePolicy(threads_per_group=32))
    assert_close_dtype(q_out, rotated(q, cos, sin, False).float())
    assert_close_dtype(k_out, rotated(k, cos, sin, False).float())


@pytest.mark.parametrize("interleaved", [False, True])
def test_gradients_match_autograd_of_the_math(interleaved):
    """Training through the op: dq, dk and the tables' gradients (summed over batch, heads and both
    tensors) against float64 autograd of the pair-by-pair formula."""
    q, k = randn(B, HQ, S, 10, seed=8), randn(B, HK, S, 10, seed=9)
    cos, sin = randn(B, 1, S, 8, seed=10), randn(S, 8, seed=11)
    gq, gk = randn(B, HQ, S, 10, seed=12), randn(B, HK, S, 10, seed=13)
    leaves = [t.clone().requires_grad_() for t in (q, k, cos, sin)]
    with config.patch(emulate_metal=True):
        q_out, k_out = torch.ops.mpsk.rope_qk(*leaves, interleaved)
    torch.autograd.backward((q_out, k_out), (gq, gk))
    ref = [t.double().requires_grad_() for t in (q, k, cos, sin)]
    outs = (rotated(ref[0], ref[2], ref[3], interleaved), rotated(ref[1], ref[2], ref[3], interleaved))
    torch.autograd.backward(outs, (gq.double(), gk.double()))
    for got, want in zip(leaves, ref, strict=True):
        torch.testing.assert_close(got.grad.double(), want.grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("make,match", [
    (lambda q, k, c, s: (q, k, c.expand(B, HQ, S, 8).contiguous(), s), "same for every head"),
    (lambda q, k, c, s: (q, k[:, :, :3], c, s), "batch, sequence and head dim"),
    (lambda q, k, c, s: (q, k.half(), c, s), "must match"),
    (lambda q, k, c, s: (q, k[0], c, s), "4 dimensions"),
])
def test_bad_inputs_are_named(make, match):
    q, k = randn(B, HQ, S, 8, seed=14), randn(B, HK, S, 8, seed=15)
    cos, sin = randn(B, 1, S, 8, seed=16), randn(B, 1, S, 8, seed=17)
    with pytest.raises((ValueError, TypeError), match=match):
        torch.ops.mpsk.rope_qk(*make(q, k, cos, sin))


def test_kernels_fit_metals_buffer_argument_table():
    """Metal binds at most 31 buffers to a kernel function and each `constant long&` takes one, so a
    kernel past that compiles here but not on a Mac: counted from the signature the emulator parses."""
    q, k = randn(B, HQ, S, 8, seed=18), randn(B, HK, S, 8, seed=19)
    cos = sin = randn(S, 8, seed=20)
    ops = [Operand.of(t) for t in (q, k, cos, sin)]
    launches = [*rope_launch(ops[0], ops[2], ops[3], False, "cpu").plan.launches,
                *rope_qk_launch(*ops, Operand.of(torch.empty_like(k)), False, "cpu").plan.launches]
    for launch in launches:
        kernel = getattr(ShaderLibrary(launch.source, "cpu"), launch.kernel)
        assert len(kernel.buffers) == len(launch.args) <= 31, launch.kernel
