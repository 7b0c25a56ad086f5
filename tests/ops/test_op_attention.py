"""mpsk::attention: the Metal kernels (emulated, NaN-poisoned outputs and scratch) against
F.scaled_dot_product_attention in float64; argument checks; opcheck; gradcheck.

Each test runs one or two compiled kernel variants (the variant is fixed by head dims, scale,
causal / window / mask kind and the launch policy) over several shapes and dtypes, so the
module compiles about fifteen sources.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_close_dtype, op_tolerances
from helpers import sdpa_reference as reference
from torch._subclasses.fake_tensor import FakeTensorMode

import mps_inductor_ext  # noqa: F401  (registers torch.ops.mpsk)
from mps_inductor_ext import config
from mps_inductor_ext.config import AttentionPolicy
from mps_inductor_ext.ops import attention as attention_mod
from mps_inductor_ext.ops import operands
from mps_inductor_ext.ops.common import poisoned_outputs
from mps_inductor_ext.ops.launch import TensorArg
from mps_inductor_ext.shaders import ShaderLibrary

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
TOL = op_tolerances("attention")
SPLIT = AttentionPolicy(split_kv_above=64, partition_size=32)
op = torch.ops.mpsk.attention


def gen(seed):
    return torch.Generator().manual_seed(seed)


def qkv(B, Hq, Hkv, Sq, Skv, D, Dv=None, dtype=torch.float32, seed=0):
    g = gen(seed)
    Dv = D if Dv is None else Dv
    return (torch.randn(B, Hq, Sq, D, generator=g).to(dtype), torch.randn(B, Hkv, Skv, D, generator=g).to(dtype),
            torch.randn(B, Hkv, Skv, Dv, generator=g).to(dtype))


class Recorder:
    """Wraps run_plan (where every eager launch goes): the kernels each call launched and the tensors it bound."""

    def __init__(self, monkeypatch):
        self.calls = []
        real = operands.run_plan

        def run(plan, tensors, backend):
            self.calls.append(([launch.kernel for launch in plan.launches], dict(tensors), plan))
            return real(plan, tensors, backend)

        monkeypatch.setattr(operands, "run_plan", run)

    @property
    def kernels(self):
        return self.calls[-1][0]


@pytest.fixture
def rec(monkeypatch):
    return Recorder(monkeypatch)


def metal(*args, **kwargs):
    with config.patch(emulate_metal=True), poisoned_outputs():
        return op(*args, **kwargs)


def check(rec, q, k, v, kernel, mask=None, scale=None, causal=False, window=-1):
    """Runs the emulated kernels, checks the path taken, and compares with PyTorch."""
    before = (q.clone(), k.clone(), v.clone())
    got = metal(q, k, v, mask, scale, causal, window)
    assert rec.kernels[0].startswith(kernel), rec.kernels
    assert got.is_contiguous()
    assert_close_dtype(got, reference(q, k, v, mask, scale, causal, window), TOL[q.dtype])
    for t, b in zip((q, k, v), before, strict=True):
        assert torch.equal(t, b)  # inputs untouched
    return got


@pytest.mark.parametrize("D", [32, 64, 80, 96, 128, 256])
def test_head_dims(rec, D):
    for dtype in DTYPES:
        check(rec, *qkv(1, 2, 1, 19, 21, D, dtype=dtype, seed=D), "attn_prefill")
        prefill = rec.calls[-1][2].launches[0]
        check(rec, *qkv(2, 2, 2, 2, 21, D, dtype=dtype, seed=D + 1), "attn_decode")
    # the compiled kernel's threadgroup memory is what the plan budgeted, within 32 KiB; every head
    # dim here is a multiple of 8, so prefill ran on the matrix units
    assert "#define PREFILL_MATRIX 1" in prefill.source
    fn = ShaderLibrary(prefill.source, "cpu").get_kernel_function(prefill.kernel)
    budget = attention_mod.matrix_prefill_tiles(D, D, AttentionPolicy())[1]
    assert fn.static_thread_group_memory_length == budget <= attention_mod.TG_BUDGET


def test_dv_differs_from_d_with_explicit_scale(rec):
    for dtype in DTYPES:
        check(rec, *qkv(1, 4, 2, 23, 40, 80, 48, dtype, seed=1), "attn_prefill", scale=0.3)
        check(rec, *qkv(1, 4, 2, 3, 40, 80, 48, dtype, seed=2), "attn_decode", scale=0.3)


def test_causal_shapes_and_gqa(rec):
    """Top-left causal mask with Sq < Skv, Sq > Skv, Skv = 1, and GQA 8:1."""
    for dtype in DTYPES:
        check(rec, *qkv(1, 8, 1, 20, 45, 64, dtype=dtype, seed=3), "attn_prefill", causal=True)
    for Sq, Skv in [(40, 13), (17, 1), (33, 33), (1, 9), (3, 2), (4, 1)]:
        check(rec, *qkv(2, 4, 2, Sq, Skv, 64, seed=Sq + Skv), "attn_decode" if Sq <= 4 else "attn_prefill",
              causal=True)


def test_sliding_window_with_causal(rec, math_mode):
    """Mistral: keys in (i - window, i]; with Sq > Skv the late rows see no key and give 0."""
    for window, (Sq, Skv) in [(1, (20, 20)), (3, (37, 30)), (8, (50, 9)), (1000, (18, 40)), (2, (4, 30))]:
        got = check(rec, *qkv(1, 4, 1, Sq, Skv, 64, seed=window), "attn_decode" if Sq <= 4 else "attn_prefill",
                    causal=True, window=window)
        if Sq - window >= Skv:
            assert (got[:, :, Skv - 1 + window:] == 0).all()
    check(rec, *qkv(1, 2, 1, 21, 40, 64, dtype=torch.bfloat16, seed=9), "attn_prefill", causal=True, window=5)


def test_bool_masks_with_broadcasting_and_window(rec, math_mode):
    """Bool masks of several broadcast shapes, alone (window 1000 hides nothing) and with a
    non-causal window; fully masked rows included."""
    B, Hq, Sq, Skv = 2, 4, 19, 37
    g = gen(11)
    full = torch.rand(B, Hq, Sq, Skv, generator=g) > 0.4
    full[0, 1, 3] = False  # a row with no visible key
    masks = [
        full,
        torch.rand(Sq, Skv, generator=g) > 0.5,
        torch.rand(B, 1, Sq, Skv, generator=g) > 0.3,
        torch.rand(1, Hq, 1, Skv, generator=g) > 0.5,
        torch.rand(Skv, generator=g) > 0.5,
        (torch.rand(B, Hq, Skv, Sq, generator=g) > 0.5).transpose(-1, -2),  # non-contiguous
    ]
    q, k, v = qkv(B, Hq, 2, Sq, Skv, 64, seed=12)
    for i, mask in enumerate(masks):
        for window in (1000, 4):
            check(rec, q, k, v, "attn_prefill", mask=mask, window=window)
        dq = q[:, :, :3]
        check(rec, dq, k, v, "attn_decode", mask=mask[..., :3, :] if mask.dim() > 1 and mask.shape[-2] > 1 else mask,
              window=1000 if i % 2 else 6)
    check(rec, q, k, v, "attn_prefill", mask=masks[4], window=1000)
    bound, launch = rec.calls[-1][1]["mask"], rec.calls[-1][2].launches[0]
    assert bound.dtype == torch.uint8 and bound.shape == (Skv,)  # bound as it is, never expanded in memory
    at = launch.args.index(TensorArg("mask"))
    assert [a.value for a in launch.args[at + 1:at + 5]] == [0, 0, 0, 1]  # read through stride 0
    check(rec, q.half(), k.half(), v.half(), "attn_prefill", mask=masks[0], window=1000)
    assert (metal(q, k, v, full, None, False, 1000)[0, 1, 3] == 0).all()


def test_float_masks_with_causal(rec, math_mode):
    """Additive masks (with -inf entries and fully hidden rows) combined with the causal mask,
    as PyTorch combines them; a float32 mask on half inputs is converted to half."""
    B, Hq, Sq, Skv = 1, 4, 21, 30
    g = gen(13)
    mask = torch.randn(Sq, Skv, generator=g)
    mask[torch.rand(Sq, Skv, generator=g) > 0.7] = float("-inf")
    mask[5] = float("-inf")
    head_bias = torch.randn(Hq, 1, Skv, generator=g) * 3
    for dtype in DTYPES:
        q, k, v = qkv(B, Hq, 1, Sq, Skv, 64, dtype=dtype, seed=14)
        check(rec, q, k, v, "attn_prefill", mask=mask.to(dtype), causal=True)
        check(rec, q, k, v, "attn_prefill", mask=head_bias.to(dtype), causal=True)
        check(rec, q[:, :, :4], k, v, "attn_decode", mask=mask[:4].to(dtype), causal=True)
    q, k, v = qkv(B, Hq, 1, Sq, Skv, 64, dtype=torch.float16, seed=15)
    got = metal(q, k, v, head_bias, None, True)
    assert rec.calls[-1][1]["mask"].dtype == torch.float16
    assert_close_dtype(got, reference(q, k, v, head_bias.half(), causal=True), TOL[torch.float16])


@pytest.mark.parametrize("kind", ["bool", "-inf", "finfo.min"])
def test_left_padding(rec, math_mode, kind):
    """A batch padded on the left, as Hugging Face builds it: causal and padding in one mask. Padded
    query rows see no key and give 0 (bool, -inf); with finfo.min (a finite mask) every key stays
    visible and they average the padded keys, as PyTorch computes it. Under fast math too."""
    B, Hq, S, pad = 2, 2, 24, (0, 9)
    keep = torch.ones(B, 1, S, S, dtype=torch.bool).tril()
    keep[1, :, :, :pad[1]] = False
    for dtype in DTYPES:
        if kind == "bool":
            mask = keep
        else:
            fill = float("-inf") if kind == "-inf" else torch.finfo(dtype).min
            mask = torch.zeros(B, 1, S, S, dtype=dtype).masked_fill(~keep, fill)
        q, k, v = qkv(B, Hq, 1, S, S, 64, dtype=dtype, seed=21)
        got = check(rec, q, k, v, "attn_prefill", mask=mask)
        if kind != "finfo.min":
            assert (got[1, :, :pad[1]] == 0).all()
        with config.patch(attention=SPLIT):
            check(rec, q[:, :, :3], k, v, "attn_decode", mask=mask[:, :, :3])


def test_split_kv(rec):
    """Long Skv: partitions of 32 keys (the last partial), then the reduce pass; GQA 8:1."""
    with config.patch(attention=SPLIT):
        for dtype in DTYPES:
            for Sq in (1, 4):
                check(rec, *qkv(1, 8, 1, Sq, 200, 64, dtype=dtype, seed=Sq), "attn_decode")
                assert rec.kernels == [f"attn_decode_{attention_mod.METAL_DTYPES[dtype]}",
                                       f"attn_reduce_{attention_mod.METAL_DTYPES[dtype]}"]
        check(rec, *qkv(2, 2, 2, 2, 65, 64, seed=5), "attn_decode")  # two partitions, one of one key
        assert len(rec.calls[-1][2].scratch) == 3


def test_split_kv_with_mask_hiding_partitions(rec, math_mode):
    """Partitions with no visible key (max -inf) and a fully hidden row merge to the right answer."""
    Sq, Skv = 3, 150
    mask = torch.zeros(Sq, Skv, dtype=torch.bool)
    mask[0, 40:50] = True  # row 0: one partial partition
    mask[1, ::7] = True  # row 1: every partition
    # row 2: no visible key
    with config.patch(attention=SPLIT):
        for dtype in DTYPES:
            got = check(rec, *qkv(1, 2, 1, Sq, Skv, 64, dtype=dtype, seed=6), "attn_decode", mask=mask)
            assert (got[:, :, 2] == 0).all()


def test_other_launch_policy(rec):
    """Small tiles, one SIMD-group per threadgroup (8 rows each), decode up to 8 query rows."""
    policy = AttentionPolicy(block_q=8, block_kv=8, prefill_simdgroups=1, decode_max_q=8, decode_simdgroups=1)
    with config.patch(attention=policy):
        for Sq in (5, 8):
            check(rec, *qkv(1, 2, 1, Sq, 29, 64, seed=Sq), "attn_decode", causal=True)
        check(rec, *qkv(1, 2, 1, 9, 29, 64, seed=9), "attn_prefill", causal=True)
        check(rec, *qkv(1, 2, 1, 30, 17, 64, dtype=torch.bfloat16, seed=10), "attn_prefill", causal=True)


def test_noncontiguous_and_offset_inputs(rec):
    """Transposed (B, S, H, D) views and storage offsets are read in place; a non-unit last
    stride is copied first."""
    g = gen(20)
    B, Hq, Hkv, Sq, Skv, D = 2, 4, 2, 18, 25, 64
    q = torch.randn(B, Sq, Hq, D, generator=g).transpose(1, 2)
    k = torch.randn(B, Skv, Hkv, D, generator=g).transpose(1, 2)
    v = torch.randn(B, Hkv, Skv + 3, D, generator=g)[:, :, 3:]
    check(rec, q, k, v, "attn_prefill")
    bound = rec.calls[-1][1]
    assert bound["q"].data_ptr() == q.data_ptr() and bound["v"].storage_offset() == v.storage_offset() > 0
    check(rec, q[:, :, 5:8], k, v, "attn_decode")
    strided = torch.randn(B, Hq, Sq, 2 * D, generator=g)[..., ::2]
    check(rec, strided, k, v, "attn_prefill")
    assert rec.calls[-1][1]["q"].is_contiguous()


@pytest.mark.parametrize(
    "shape",
    [(0, 2, 1, 5, 6, 8, 8), (1, 2, 1, 0, 6, 8, 8), (1, 0, 0, 5, 6, 8, 8), (1, 2, 1, 5, 6, 8, 0),
     (1, 2, 1, 5, 0, 8, 8), (1, 2, 1, 5, 6, 0, 3)],
)
def test_empty_tensors(rec, shape):
    """Empty results stay empty; Skv = 0 gives zeros and D = 0 ATen's answer, as PyTorch."""
    B, Hq, Hkv, Sq, Skv, D, Dv = shape
    q, k, v = qkv(B, Hq, Hkv, Sq, Skv, D, Dv, seed=1)
    for causal in (False, True):
        got = metal(q, k, v, None, None, causal)
        assert got.shape == (B, Hq, Sq, Dv)
        torch.testing.assert_close(got, F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True))
    assert rec.calls == []


def _err(exc, match, q, k, v, *args):
    with pytest.raises(exc, match=match):
        metal(q, k, v, *args)


def test_bad_inputs(rec):
    q, k, v = qkv(1, 4, 2, 5, 6, 8)
    _err(ValueError, "q must have 4 dimensions", q[0], k, v)
    _err(ValueError, "k must have 4 dimensions", q, k[None], v)
    _err(ValueError, "batch", q, k.expand(2, -1, -1, -1), v)
    _err(ValueError, "k's head dim", q, k[..., :4], v)
    _err(ValueError, "v has 5 keys", q, k, v[:, :, :5])
    _err(ValueError, "k has 2 heads but v has 1", q, k, v[:, :1])
    _err(ValueError, "not a multiple", q[:, :3], k, v)
    _err(TypeError, "q must be float32", q.to(torch.int32), k, v)
    _err(TypeError, "k is torch.float16", q, k.half(), v)
    _err(ValueError, "v is on meta", q, k, v.to("meta"))
    _err(ValueError, "attn_mask of shape", q, k, v, torch.ones(5, 7, dtype=torch.bool))
    _err(ValueError, "attn_mask of shape", q, k, v, torch.ones(1, 1, 1, 5, 6, dtype=torch.bool))
    _err(ValueError, "attn_mask is on meta", q, k, v, torch.ones(5, 6, dtype=torch.bool, device="meta"))
    _err(TypeError, "attn_mask must be float32", q, k, v, torch.ones(5, 6, dtype=torch.int64))
    _err(ValueError, "scale", q, k, v, None, math.inf)
    _err(ValueError, "scale", q, k, v, None, math.nan)
    for window in (0, -2):
        _err(ValueError, "window must be -1", q, k, v, None, None, True, window)
    big = qkv(1, 1, 1, 5, 6, 264)
    _err(ValueError, "head dims 1..256", *big)
    assert rec.calls == []  # every error came before a launch
    with FakeTensorMode():  # float64 is refused on MPS (fake mps tensors run the same checks)
        fq = torch.empty(1, 2, 3, 8, dtype=torch.float64, device="mps")
        with pytest.raises(TypeError, match="q is float64, which MPS does not support"):
            op(fq, fq, fq)


def test_launch_policy_checks():
    assert attention_mod.prefill_tiles(256, 256, AttentionPolicy())[:2] == (8, 8)
    assert attention_mod.prefill_tiles(64, 64, AttentionPolicy())[:2] == (16, 32)
    for d in (32, 64, 80, 96, 128, 256):
        assert attention_mod.prefill_tiles(d, d, AttentionPolicy())[2] <= 32 * 1024
    with pytest.raises(ValueError, match="no prefill tiling"):
        attention_mod.prefill_tiles(256, 256, AttentionPolicy(block_q=16, prefill_simdgroups=16))
    for bad in (dict(block_q=12), dict(decode_max_q=9), dict(block_q=16, prefill_simdgroups=3),
                dict(decode_simdgroups=33), dict(partition_size=48)):
        with pytest.raises(ValueError):
            AttentionPolicy(**bad)


OPCHECK_CASES = [
    dict(shape=(1, 4, 2, 5, 7, 8, 8), kwargs={}),
    dict(shape=(2, 2, 1, 6, 4, 8, 5), kwargs=dict(is_causal=True, scale=0.5)),
    dict(shape=(1, 2, 2, 5, 9, 8, 8), kwargs=dict(is_causal=True, window=2)),
    dict(shape=(1, 2, 1, 3, 6, 8, 8), mask=(3, 6), kwargs=dict(window=3)),
    dict(shape=(2, 2, 2, 3, 6, 8, 8), mask=(2, 1, 1, 6), float_mask=True, kwargs={}),
]


@pytest.mark.parametrize("case", OPCHECK_CASES, ids=range(len(OPCHECK_CASES)))
def test_opcheck(case):
    q, k, v = (t.requires_grad_() for t in qkv(*case["shape"], seed=3))
    args = (q, k, v)
    if "mask" in case:
        mask = torch.rand(case["mask"], generator=gen(4))
        args += (torch.log(mask) if case.get("float_mask") else mask > 0.3,)
    torch.library.opcheck(op, args, case["kwargs"])


def test_opcheck_emulated():
    q, k, v = qkv(1, 2, 1, 6, 7, 32, seed=8)
    with config.patch(emulate_metal=True):
        torch.library.opcheck(op, (q, k, v), {"is_causal": True},
                              test_utils=("test_schema", "test_faketensor"))


GRAD_CASES = [
    dict(kwargs={}),
    dict(kwargs=dict(is_causal=True, scale=0.7)),
    dict(kwargs=dict(is_causal=True, window=2), Sq=8),  # rows 7+ see no key
    dict(mask="bool", kwargs={}),
    dict(mask="float", kwargs=dict(is_causal=True)),
    dict(mask="bool", kwargs=dict(window=3)),
]


@pytest.mark.parametrize("case", GRAD_CASES, ids=range(len(GRAD_CASES)))
def test_gradcheck(case):
    Sq = case.get("Sq", 5)
    q, k, v = (t.double().requires_grad_() for t in qkv(1, 4, 2, Sq, 6, 4, 3, seed=5))
    mask = None
    if case.get("mask") == "bool":
        mask = torch.rand(Sq, 6, generator=gen(6)) > 0.4
        mask[1] = False
    elif case.get("mask") == "float":
        mask = torch.randn(4, 1, 6, generator=gen(7), dtype=torch.float64)
        mask[0, 0, 2] = float("-inf")
    fn = lambda q, k, v: op(q, k, v, mask, **case["kwargs"])  # noqa: E731
    assert torch.autograd.gradcheck(fn, (q, k, v))


def test_gradients_match_pytorch_autograd():
    """The explicit backward against autograd through F.scaled_dot_product_attention, in bf16
    and fp32 (fp32 accumulation) with GQA and a causal mask."""
    for dtype in (torch.float32, torch.bfloat16):
        q, k, v = (t.requires_grad_() for t in qkv(2, 4, 2, 7, 9, 16, 8, dtype=dtype, seed=2))
        grad = torch.randn(2, 4, 7, 8, generator=gen(3)).to(dtype)
        got = torch.autograd.grad(op(q, k, v, None, None, True), (q, k, v), grad)
        qd, kd, vd = (t.detach().double().requires_grad_() for t in (q, k, v))
        out = F.scaled_dot_product_attention(qd, kd, vd, is_causal=True, enable_gqa=True)
        want = torch.autograd.grad(out, (qd, kd, vd), grad.double())
        for g, w in zip(got, want, strict=True):
            assert g.dtype == dtype
            assert_close_dtype(g, w.to(dtype), TOL[dtype])
