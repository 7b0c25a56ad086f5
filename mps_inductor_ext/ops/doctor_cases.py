"""The doctor's cases for each op family: what `python -m mps_inductor_ext doctor` runs.

For each family (families.FAMILIES) `<name>_cases()` yields `Case`s whose tensors are on the CPU
(the doctor moves them to the device of the active shader runtime) and `<name>_reference(*args,
**kwargs)` computes the expected output with ATen, in higher precision where the op's own
reference would round differently from an fp32-accumulating kernel.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from . import attention, norm, quantized
from .tolerances import op_tolerances


@dataclass(frozen=True)
class Case:
    """One call of the op: ``op(*args, **kwargs)``; ``tol`` overrides the dtype's tolerance."""

    label: str
    args: tuple
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    tol: float | None = None


# ---------------------------------------------------------------- rms_norm and layer_norm

NORM_SHAPES = [(1, 1), (3, 7), (4, 64), (2, 3, 130), (2, 4100)]
NORM_DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _shape_label(shape: tuple, dtype: torch.dtype) -> str:
    return f"{str(dtype).removeprefix('torch.')} {'x'.join(map(str, shape))}"


def rms_norm_cases() -> Iterable[Case]:
    for i, (dtype, shape) in enumerate((d, s) for d in NORM_DTYPES for s in NORM_SHAPES):
        x = torch.randn(shape, generator=_gen(i)).to(dtype)
        w = torch.randn(shape[-1], generator=_gen(100 + i)).to(dtype)
        yield Case(_shape_label(shape, dtype), (x, w, 1e-6))
    x = torch.randn(4, 96, generator=_gen(7))
    yield Case("float32 4x96 no weight", (x, None, 1e-5))
    yield Case("float32 4x96 weight offset 1", (x, 0.1 * torch.randn(96, generator=_gen(8)), 1e-6, 1.0))


def rms_norm_reference(x, weight, eps, weight_offset=0.0):
    """The op's own reference (fp32 math)."""
    return norm.rms_norm_reference(x, weight, eps, weight_offset)


def layer_norm_cases() -> Iterable[Case]:
    for i, (dtype, shape) in enumerate((d, s) for d in NORM_DTYPES for s in NORM_SHAPES):
        x = (torch.randn(shape, generator=_gen(i)) + 0.5).to(dtype)
        w = torch.randn(shape[-1], generator=_gen(200 + i)).to(dtype)
        b = torch.randn(shape[-1], generator=_gen(300 + i)).to(dtype)
        yield Case(_shape_label(shape, dtype), (x, w, b, 1e-5))
    yield Case("float32 4x96 no affine", (torch.randn(4, 96, generator=_gen(9)), None, None, 1e-5))


def layer_norm_reference(x, weight, bias, eps):
    """F.layer_norm in float32 (ATen's half CPU kernel rounds more than the fp32-accumulating kernel)."""
    f = None if weight is None else weight.float()
    b = None if bias is None else bias.float()
    return torch.nn.functional.layer_norm(x.float(), (x.shape[-1],), f, b, eps).to(x.dtype)


def add_rms_norm_cases() -> Iterable[Case]:
    """Register and looped forms (4100 columns), every dtype, a strided x, Gemma's weight offset."""
    for i, (dtype, shape) in enumerate((d, s) for d in NORM_DTYPES for s in NORM_SHAPES):
        x, r = (torch.randn(shape, generator=_gen(400 + 2 * i + j)).to(dtype) for j in range(2))
        w = torch.randn(shape[-1], generator=_gen(500 + i)).to(dtype)
        yield Case(_shape_label(shape, dtype), (x, r, w, 1e-6))
    x, r = (torch.randn(4, 192, generator=_gen(600 + j)) for j in range(2))
    yield Case("float32 4x96 strided x, no weight", (x[:, ::2], r[:, :96], None, 1e-5))
    yield Case("float32 4x192 weight offset 1", (x, r, 0.1 * torch.randn(192, generator=_gen(602)), 1e-6, 1.0))


def add_rms_norm_reference(x, residual, weight, eps, weight_offset=0.0):
    """The op's own reference: h in x's dtype, the norm of it in fp32 math."""
    return norm.add_rms_norm_reference(x, residual, weight, eps, weight_offset)


def add_layer_norm_cases() -> Iterable[Case]:
    for i, (dtype, shape) in enumerate((d, s) for d in NORM_DTYPES for s in NORM_SHAPES):
        x, r = ((torch.randn(shape, generator=_gen(700 + 2 * i + j)) + 0.5).to(dtype) for j in range(2))
        w = torch.randn(shape[-1], generator=_gen(800 + i)).to(dtype)
        b = torch.randn(shape[-1], generator=_gen(900 + i)).to(dtype)
        yield Case(_shape_label(shape, dtype), (x, r, w, b, 1e-5))
    x, r = (torch.randn(4, 96, generator=_gen(1000 + j)) for j in range(2))
    yield Case("float32 4x96 no affine", (x, r, None, None, 1e-5))


def add_layer_norm_reference(x, residual, weight, bias, eps):
    """h in x's dtype, then layer_norm_reference's float32 math on it."""
    h = x + residual
    return layer_norm_reference(h, weight, bias, eps), h


# ---------------------------------------------------------------- attention

ATTENTION_TOL = op_tolerances("attention")


def attention_cases() -> Iterable[Case]:
    """Prefill and decode, causal, GQA, bool and additive masks, a window, uneven head dims."""
    shapes = [  # (B, Hq, Hkv, Sq, Skv, D, Dv), options
        ((1, 2, 2, 5, 5, 16, 16), {}),
        ((2, 4, 2, 9, 9, 32, 32), {"is_causal": True}),
        ((1, 4, 1, 1, 12, 64, 64), {}),  # decode, multi-query
        ((1, 2, 1, 7, 7, 24, 8), {"is_causal": True, "window": 3}),
        ((1, 2, 2, 6, 10, 16, 16), {"scale": 0.2}),
    ]
    seed = 0
    for dtype in NORM_DTYPES:
        for (B, Hq, Hkv, Sq, Skv, D, Dv), kw in shapes:
            g = _gen(seed := seed + 1)
            q, k = torch.randn(B, Hq, Sq, D, generator=g), torch.randn(B, Hkv, Skv, D, generator=g)
            v = torch.randn(B, Hkv, Skv, Dv, generator=g)
            label = f"{str(dtype).removeprefix('torch.')} {B}x{Hq}/{Hkv}x{Sq}x{Skv}x{D}/{Dv} {kw or ''}".rstrip()
            yield Case(label, (q.to(dtype), k.to(dtype), v.to(dtype)), kw, ATTENTION_TOL[dtype])
    g = _gen(50)
    q, k, v = (torch.randn(1, 2, 6, 16, generator=g) for _ in range(3))
    keep = torch.rand(1, 1, 6, 6, generator=g) > 0.3
    keep[..., 0, :] = False  # a fully hidden row gives 0
    yield Case("float32 bool mask (1,1,S,S)", (q, k, v, keep), {}, ATTENTION_TOL[torch.float32])
    bias = torch.randn(2, 1, 6, generator=g).half()
    yield Case("float16 additive mask (H,1,Skv)", (q.half(), k.half(), v.half(), bias), {"is_causal": True},
               ATTENTION_TOL[torch.float16])


def attention_reference(q, k, v, attn_mask=None, scale=None, is_causal=False, window=-1):
    """mpsk's ATen reference in float64, cast back to q's dtype."""
    if attn_mask is not None and attn_mask.dtype != torch.bool:
        attn_mask = attn_mask.double()
    out = attention.attention_reference(q.double(), k.double(), v.double(), attn_mask, scale, is_causal, window)
    return out.to(q.dtype)


# ---------------------------------------------------------------- softmax and rope


def softmax_cases() -> Iterable[Case]:
    """Last-dim rows of every length class (1, odd, vector-aligned, past online_above), both forms;
    then a middle and a leading dim, where the kernel walks strided rows."""
    for i, (dtype, shape) in enumerate((d, s) for d in NORM_DTYPES for s in NORM_SHAPES):
        x = (3 * torch.randn(shape, generator=_gen(400 + i))).to(dtype)
        yield Case(_shape_label(shape, dtype), (x, -1, False))
        yield Case(_shape_label(shape, dtype) + " log", (x, -1, True))
    x = 3 * torch.randn(2, 33, 5, generator=_gen(10))
    yield Case("float32 2x33x5 dim 1", (x, 1, False))
    yield Case("float32 2x33x5 dim 0 log", (x, 0, True))


def softmax_reference(x, dim, log=False):
    """ATen's softmax in float32, rounded once to x's dtype (the op's contract)."""
    return (torch.log_softmax if log else torch.softmax)(x.float(), dim).to(x.dtype)


ROPE_SHAPES = [  # (B, H, S, D), R, the shape cos and sin broadcast from
    ((1, 1, 1, 2), 2, (1, 2)),
    ((2, 3, 5, 8), 8, (5, 8)),
    ((2, 3, 5, 8), 8, (2, 1, 5, 8)),
    ((1, 4, 7, 64), 32, (1, 1, 7, 32)),
    ((2, 3, 2, 10), 4, (2, 3, 1, 4)),  # GPT-J's (B, S, H, D) with (B, S, 1, R) tables, partial
]


def rope_cases() -> Iterable[Case]:
    """rotate_half and interleaved, full and partial rotary, tables broadcast over batch or heads;
    cos and sin are arbitrary values, not one real table, so a cos/sin or index mix-up shows."""
    i = 0
    for dtype in NORM_DTYPES:
        for shape, rot, table in ROPE_SHAPES:
            for interleaved in (False, True):
                x = torch.randn(shape, generator=_gen(500 + i)).to(dtype)
                cos = torch.randn(table, generator=_gen(600 + i)).to(dtype)
                sin = torch.randn(table, generator=_gen(700 + i)).to(dtype)
                label = f"{_shape_label(shape, dtype)} R={rot} cos {'x'.join(map(str, table))}"
                yield Case(label + (" interleaved" if interleaved else ""), (x, cos, sin, interleaved))
                i += 1


def rope_reference(x, cos, sin, interleaved=False):
    """The models' own formulas in float32: HF Llama's rotate_half, GPT-J's rotate_every_two."""
    rot = cos.shape[-1]
    x1 = x[..., :rot].float()
    if interleaved:
        rotated = torch.stack((-x1[..., 1::2], x1[..., ::2]), dim=-1).flatten(-2)
    else:
        rotated = torch.cat((-x1[..., rot // 2:], x1[..., : rot // 2]), dim=-1)
    out = x1 * cos.float() + rotated * sin.float()
    return torch.cat((out.to(x.dtype), x[..., rot:]), dim=-1)


def rope_qk_cases() -> Iterable[Case]:
    """q and k with different head counts (GQA) and k a transposed (B, S, H, D) view; tables
    broadcast over batch or not, both rotation styles, full and partial rotary."""
    for i, (dtype, (rot, table), interleaved) in enumerate(
            (d, t, il) for d in NORM_DTYPES for t in ((8, (5, 8)), (4, (2, 1, 5, 4))) for il in (False, True)):
        q = torch.randn(2, 4, 5, 8, generator=_gen(800 + i)).to(dtype)
        k = torch.randn(2, 5, 2, 8, generator=_gen(850 + i)).to(dtype).transpose(1, 2)
        cos = torch.randn(table, generator=_gen(900 + i)).to(dtype)
        sin = torch.randn(table, generator=_gen(950 + i)).to(dtype)
        label = f"{str(dtype).removeprefix('torch.')} q 2x4x5x8 k 2x2x5x8 R={rot} cos {'x'.join(map(str, table))}"
        yield Case(label + (" interleaved" if interleaved else ""), (q, k, cos, sin, interleaved))


def rope_qk_reference(q, k, cos, sin, interleaved=False):
    """rope_reference of q and of k."""
    return rope_reference(q, cos, sin, interleaved), rope_reference(k, cos, sin, interleaved)


# ---------------------------------------------------------------- quantized_linear

QUANTIZED_SHAPES = [  # (rows, K, N, group_size, bits, bias)
    (1, 64, 64, 32, 4, False),
    (3, 384, 75, 64, 4, True),  # N not a multiple of a threadgroup's outputs
    (8, 512, 96, 128, 4, False),
    (13, 256, 40, 64, 8, True),  # two blocks of rows, the last partial
    (1, 2048, 256, 128, 4, True),
]


def quantized_linear_cases() -> Iterable[Case]:
    """Decode (1 to 8 rows) and a few more, every group size, 4 and 8 bits, with and without bias;
    x scaled by 1/sqrt(K) so outputs are O(1) and the dtype's tolerance holds whatever K."""
    from ..quantization import quantize_weight

    for i, (dtype, (rows, k, n, group, bits, has_bias)) in enumerate(
            (d, s) for d in NORM_DTYPES for s in QUANTIZED_SHAPES):
        w = torch.randn(n, k, generator=_gen(800 + i)).to(dtype)
        x = (torch.randn(rows, k, generator=_gen(900 + i)) / k**0.5).to(dtype)
        bias = torch.randn(n, generator=_gen(1000 + i)).to(dtype) if has_bias else None
        label = f"{_shape_label((rows, k, n), dtype)} g{group} {bits}-bit{' bias' if has_bias else ''}"
        yield Case(label, (x, *quantize_weight(w, group, bits), group, bits, bias))


def quantized_linear_reference(x, w_packed, scales, biases, group_size, bits, bias=None):
    """x @ W^T (+ bias) in float64, W dequantized in float64, rounded once to x's dtype."""
    out = quantized.quantized_linear_reference(x.double(), w_packed, scales.double(), biases.double(), group_size,
                                               bits, None if bias is None else bias.double())
    return out.to(x.dtype)
