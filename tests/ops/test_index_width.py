"""32-bit index math in the row kernels and rope (64-bit integer operations are several times slower on
Apple GPUs), a 64-bit row base, and the host's guard: a plan whose in-row indices could pass 2^32 - 1
(or are symbolic) takes the 64-bit variant (IDX64), and a rope grid a uint cannot number is refused."""

import pytest
import sympy
import torch
import torch.nn.functional as F
from helpers import assert_close_dtype, launched_variants

import mps_inductor_ext  # noqa: F401  (registers torch.ops.mpsk)
from mps_inductor_ext import config
from mps_inductor_ext.config import NormPolicy, RopePolicy, SoftmaxPolicy
from mps_inductor_ext.ops import launch
from mps_inductor_ext.ops.norm import norm_plan
from mps_inductor_ext.ops.rope import rope_plan
from mps_inductor_ext.ops.softmax import softmax_plan

BIG = 2**32


def idx64(plan) -> str:
    (only,) = plan.launches
    line = next(ln for ln in only.source.splitlines() if ln.startswith("#define IDX64 "))
    return line.rsplit(" ", 1)[1]


def norm(cols, policy=None):
    return norm_plan("rms_norm", torch.float16, 2, cols, cols, cols, has_weight=True, has_bias=False, eps=1e-6,
                     vector_ok=False, policy=policy or NormPolicy())


def softmax(cols, col_stride):
    return softmax_plan(torch.float32, 2, cols, 1, (cols * col_stride, col_stride, 1), (cols, 1, 1), log=False,
                        vector_ok=False, policy=SoftmaxPolicy())


def rope(shape, x_sd=1):
    b, h, s, d = shape
    strides = (h * s * d * x_sd, s * d * x_sd, d * x_sd, x_sd)
    return rope_plan(torch.float32, shape, d, strides, (0, 0, d, 1), (0, 0, d, 1), interleaved=False,
                     policy=RopePolicy())


def test_wide_index_decides_by_the_largest_index():
    assert not launch.wide_index(4096, sympy.Integer(BIG - 1))
    assert launch.wide_index(4096, BIG)
    assert launch.wide_index(sympy.Symbol("s0", positive=True, integer=True))  # serves any size


def test_row_kernels_and_rope_take_32_bit_indices_where_they_fit():
    assert idx64(norm(4096)) == "0" and idx64(softmax(4096, 1)) == "0" and idx64(rope((2, 8, 16, 128))) == "0"


def test_sizes_past_32_bits_take_the_64_bit_variant():
    assert idx64(norm(BIG - 8)) == "1"  # the loop index overshoots the row by one pass
    assert idx64(norm(sympy.Symbol("s0", positive=True, integer=True))) == "1"
    assert idx64(softmax(64, 2**27)) == "1"  # the column offset 64 * 2^27, not the column count
    assert idx64(rope((1, 1, 2, 128), x_sd=2**25)) == "1"


def test_a_rope_grid_past_a_uint_is_refused():
    with pytest.raises(ValueError, match="rope would launch 4294967296 threads, more than a Metal grid"):
        rope((2**16, 1, 2**10, 128))  # 2^26 rows x 64 pairs


def test_the_64_bit_variant_computes_the_same(monkeypatch):
    """With the limit lowered, the eager ops launch their IDX64 variants; they agree with PyTorch."""
    monkeypatch.setattr(launch, "INDEX32_LIMIT", 8)
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(3, 40, generator=g), torch.randn(40, generator=g)
    q, cos, sin = torch.randn(1, 2, 5, 8, generator=g), torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)
    with config.patch(emulate_metal=True), launched_variants() as launched:
        got = (torch.ops.mpsk.rms_norm(x, w, 1e-6), torch.ops.mpsk.softmax(x.t(), 0), torch.ops.mpsk.rope(q, cos, sin))
    assert [v.defines["IDX64"] for v in launched] == ["1", "1", "1"]
    rms = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w
    half = q.shape[-1] // 2
    rotated = torch.cat((-q[..., half:], q[..., :half]), -1)
    for g_, ref in zip(got, (rms, F.softmax(x.t(), 0), q * cos + rotated * sin), strict=True):
        assert_close_dtype(g_, ref)
