"""mpsk::rope: the Metal kernel (emulated) against explicit fp64 rotary math and HF's formulations."""

import pytest
import torch
from helpers import assert_close_dtype

import mps_inductor_ext  # noqa: F401  (registers torch.ops.mpsk)
from mps_inductor_ext import config
from mps_inductor_ext.config import RopePolicy
from mps_inductor_ext.ops.common import poisoned_outputs

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
B, H, S = 2, 3, 5


def gen(seed):
    return torch.Generator().manual_seed(seed)


def randn(*shape, seed, dtype=torch.float32):
    return torch.randn(shape, generator=gen(seed)).to(dtype)


def reference(x, cos, sin, interleaved):
    """The op's definition, pair by pair, in float64: pair (i0, i1) of the first R features
    becomes (x0 * cos[i0] - x1 * sin[i0], x1 * cos[i1] + x0 * sin[i1]); the rest pass through."""
    rot = cos.shape[-1]
    xd = x.double()
    full = (*x.shape[:3], rot)
    c, s = cos.double().expand(full), sin.double().expand(full)
    i0 = torch.arange(0, rot, 2) if interleaved else torch.arange(rot // 2)
    i1 = i0 + 1 if interleaved else i0 + rot // 2
    out = xd.clone()
    x0, x1 = xd[..., i0], xd[..., i1]
    out[..., i0] = x0 * c[..., i0] - x1 * s[..., i0]
    out[..., i1] = x1 * c[..., i1] + x0 * s[..., i1]
    return out.to(x.dtype)


def metal(x, cos, sin, interleaved=False, policy=None):
    changes = {"emulate_metal": True} | ({"rope": policy} if policy else {})
    with config.patch(**changes), poisoned_outputs():
        return torch.ops.mpsk.rope(x, cos, sin, interleaved)


@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dim,rot", [(1, 0), (2, 2), (7, 4), (10, 10), (64, 32)])
def test_matches_reference(dtype, interleaved, dim, rot):
    """Full and partial rotary, odd D, D = 1 (R = 0: all pass-through); cos and sin are arbitrary
    values, not a real table, so a cos[i0] / cos[i1] mix-up shows."""
    x = randn(B, H, S, dim, seed=dim, dtype=dtype)
    cos, sin = randn(S, rot, seed=1, dtype=dtype), randn(S, rot, seed=2, dtype=dtype)
    got = metal(x, cos, sin, interleaved)
    assert got.is_contiguous()
    assert_close_dtype(got, reference(x, cos, sin, interleaved))


@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize(
    "cos_shape,sin_shape",
    [
        ((S, 8), (S, 8)),
        ((1, 1, S, 8), (1, 1, S, 8)),
        ((B, 1, S, 8), (B, 1, S, 8)),
        ((B, H, S, 8), (B, H, S, 8)),
        ((1, H, 1, 8), (8,)),
        ((S, 8), (B, 1, S, 8)),
    ],
)
def test_broadcast_cos_sin(cos_shape, sin_shape, interleaved):
    x = randn(B, H, S, 12, seed=3)
    cos, sin = randn(*cos_shape, seed=4), randn(*sin_shape, seed=5)
    assert_close_dtype(metal(x, cos, sin, interleaved), reference(x, cos, sin, interleaved))


def hf_rotate_half(x):
    x1 = x[..., : x.shape[-1] // 2]
    x2 = x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


def hf_rotate_every_two(x):
    x1 = x[:, :, :, ::2]
    x2 = x[:, :, :, 1::2]
    x = torch.stack((-x2, x1), dim=-1)
    return x.flatten(-2)


def rotary_table(positions, rot, base=10000.0):
    inv_freq = 1.0 / (base ** (torch.arange(0, rot, 2, dtype=torch.float64) / rot))
    return positions.double()[..., None] * inv_freq  # (..., R/2)


@pytest.mark.parametrize("rot", [16, 8])
def test_llama_neox_convention(rot):
    """HF Llama / GPT-NeoX: cos = cat(freqs, freqs).cos(), q * cos + rotate_half(q) * sin on the first R."""
    q = randn(B, H, S, 16, seed=6, dtype=torch.float64)
    freqs = rotary_table(torch.arange(S) + 3, rot)
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos()[None, None], emb.sin()[None, None]
    q_rot, q_pass = q[..., :rot], q[..., rot:]
    want = torch.cat((q_rot * cos + hf_rotate_half(q_rot) * sin, q_pass), dim=-1)
    got = metal(q.float(), cos.float(), sin.float())
    assert_close_dtype(got, want.float())


@pytest.mark.parametrize("rot", [16, 8])
def test_gptj_convention(rot):
    """HF GPT-J (x is (B, S, H, D), per-pair sincos repeat_interleaved): the op takes the
    repeat_interleaved tables with interleaved=True."""
    k = randn(B, S, H, 16, seed=7, dtype=torch.float64)
    position_ids = torch.arange(S).repeat(B, 1) + torch.arange(B)[:, None]
    freqs = rotary_table(position_ids, rot)  # (B, S, R/2)
    sin, cos = freqs.sin(), freqs.cos()
    sin_hf = torch.repeat_interleave(sin[:, :, None, :], 2, 3)
    cos_hf = torch.repeat_interleave(cos[:, :, None, :], 2, 3)
    k_rot, k_pass = k[:, :, :, :rot], k[:, :, :, rot:]
    want = torch.cat(((k_rot * cos_hf) + (hf_rotate_every_two(k_rot) * sin_hf), k_pass), dim=-1)
    cos_op = torch.repeat_interleave(cos, 2, -1)[:, None]  # (B, 1, S, R)
    sin_op = torch.repeat_interleave(sin, 2, -1)[:, None]
    got = metal(k.float().transpose(1, 2), cos_op.float(), sin_op.float(), True)
    assert_close_dtype(got.transpose(1, 2), want.float())


@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_strided_inputs(dtype, interleaved):
    """x as the usual (B, S, H, D) transpose, with a storage offset, and then with feature stride 2;
    cos from a longer table at an offset with feature stride 2; sin as an expand of a single row."""
    base = randn(B, S, H, 40, seed=8, dtype=dtype)
    cos = randn(S + 4, 24, seed=9, dtype=dtype)[3 : 3 + S, ::2][:, :8]
    sin = randn(1, 8, seed=10, dtype=dtype).expand(S, 8)
    assert cos.storage_offset() and cos.stride(-1) == 2
    for x in (base[..., 2:18].transpose(1, 2), base[..., 4:36:2].transpose(1, 2)):
        assert x.storage_offset() and x.shape == (B, H, S, 16)
        assert_close_dtype(metal(x, cos, sin, interleaved), reference(x, cos, sin, interleaved))


def test_several_groups_with_a_partial_last_one():
    x = randn(3, 4, 7, 9, seed=11)  # 84 rows of 3 pairs + 3 copies: 504 threads in groups of 64
    cos, sin = randn(7, 6, seed=12), randn(7, 6, seed=13)
    got = metal(x, cos, sin, False, RopePolicy(threads_per_group=64))
    assert_close_dtype(got, reference(x, cos, sin, False))


@pytest.mark.parametrize("shape,rot", [((0, H, S, 8), 8), ((B, H, 0, 8), 4), ((B, 0, S, 8), 8), ((B, H, S, 0), 0)])
def test_empty(shape, rot):
    x = torch.randn(shape)
    cos = sin = torch.randn(shape[2], rot)
    got = metal(x, cos, sin)
    assert got.shape == x.shape and got.dtype == x.dtype


def test_policy_is_validated():
    with pytest.raises(ValueError, match="threads_per_group must be a multiple of 32"):
        RopePolicy(threads_per_group=100)
    with pytest.raises(TypeError, match="config.rope must be a RopePolicy"):
        config.rope = 128


X = torch.zeros(B, H, S, 8)
CS = torch.zeros(S, 8)


@pytest.mark.parametrize(
    "args,error,match",
    [
        ((torch.zeros(H, S, 8), CS, CS), ValueError, r"x must have 4 dimensions"),
        ((X, torch.zeros(1, 1, 1, S, 8), CS), ValueError, r"cos has 5 dimensions"),
        ((X, torch.zeros(S, 5), torch.zeros(S, 5)), ValueError, r"R \(last dimension of cos and sin\) must be even"),
        ((X, torch.zeros(S, 10), torch.zeros(S, 10)), ValueError, r"R=10 features, more than x's last dimension 8"),
        ((X, CS, torch.zeros(S, 4)), ValueError, r"cos and sin must have the same last dimension, got 8 and 4"),
        ((X, torch.zeros(S + 1, 8), CS), ValueError, r"cos has shape \(6, 8\), which does not broadcast"),
        ((X, CS, torch.zeros(3, 1, S, 8)), ValueError, r"sin has shape \(3, 1, 5, 8\), which does not broadcast"),
        ((X, CS.half(), CS), TypeError, r"cos is torch.float16 but x is torch.float32"),
        ((X.int(), CS.int(), CS.int()), TypeError, r"x must be float32, float16 or bfloat16"),
        ((X, CS, CS.to(torch.int64)), TypeError, r"sin must be float32, float16 or bfloat16"),
        ((X, CS.to("meta"), CS), ValueError, r"cos is on meta but x is on cpu"),
    ],
)
def test_bad_inputs(args, error, match):
    for emulate in (False, True):
        with config.patch(emulate_metal=emulate), pytest.raises(error, match=match):
            torch.ops.mpsk.rope(*args)


def test_float64_on_mps_is_rejected():
    """Checked in the fake implementation, so it holds for MPS tensors faked here."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x = torch.empty(B, H, S, 8, dtype=torch.float64, device="mps")
        cs = torch.empty(S, 8, dtype=torch.float64, device="mps")
        with pytest.raises(TypeError, match="x is float64, which MPS does not support"):
            torch.ops.mpsk.rope(x, cs, cs)


def test_backward_matches_autograd_of_the_reference():
    x = randn(B, H, S, 10, seed=14).requires_grad_()
    cos, sin = randn(B, 1, S, 6, seed=15).requires_grad_(), randn(S, 6, seed=16).requires_grad_()
    g = randn(B, H, S, 10, seed=17)
    for interleaved in (False, True):
        want = torch.autograd.grad(reference(x, cos, sin, interleaved), (x, cos, sin), g)
        got = torch.autograd.grad(metal(x, cos, sin, interleaved), (x, cos, sin), g)
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


OPCHECK_CASES = [
    ((B, H, S, 8), (S, 8), (S, 8), False, torch.float32),
    ((B, H, S, 10), (B, 1, S, 6), (1, 1, S, 6), True, torch.float32),
    ((B, H, S, 7), (S, 4), (S, 4), False, torch.float16),
    ((B, H, S, 8), (1, H, 1, 8), (8,), True, torch.float64),
]


@pytest.mark.parametrize("emulate", [False, True], ids=["aten", "emulated"])
@pytest.mark.parametrize("case", range(len(OPCHECK_CASES)))
def test_opcheck(case, emulate):
    xs, cs, ss, interleaved, dtype = OPCHECK_CASES[case]
    x = randn(*xs, seed=case, dtype=dtype).requires_grad_()
    cos = randn(*cs, seed=case + 10, dtype=dtype).requires_grad_()
    sin = randn(*ss, seed=case + 20, dtype=dtype)
    strided = x.detach().transpose(1, 2).contiguous().transpose(1, 2)  # same shape, not contiguous
    with config.patch(emulate_metal=emulate):
        torch.library.opcheck(torch.ops.mpsk.rope.default, (x, cos, sin, interleaved))
        torch.library.opcheck(torch.ops.mpsk.rope.default, (strided, cos, sin, interleaved))


@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("cos_shape,sin_shape,dim", [((S, 4), (S, 4), 6), ((B, 1, S, 6), (1, H, S, 6), 6)])
def test_gradcheck(cos_shape, sin_shape, dim, interleaved):
    x = randn(B, H, S, dim, seed=21, dtype=torch.float64).requires_grad_()
    cos = randn(*cos_shape, seed=22, dtype=torch.float64).requires_grad_()
    sin = randn(*sin_shape, seed=23, dtype=torch.float64).requires_grad_()

    def fn(x, cos, sin):
        return torch.ops.mpsk.rope(x, cos, sin, interleaved)

    assert torch.autograd.gradcheck(fn, (x, cos, sin))
    assert torch.autograd.gradgradcheck(fn, (x, cos, sin))
