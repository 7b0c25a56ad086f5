"""The ideal an mpsk kernel is measured against, stated once for every family: touch every input
element and every output element exactly once, and do the op's arithmetic and no more.

Bytes: each tensor argument's distinct elements (a broadcast view, stride 0, counts its storage
once: RoPE's cos/sin shared by all heads, a GQA group's K/V shared by its query heads, a mask
broadcast over heads), plus each output's elements, at their dtypes. No family needs an exception
to this rule; a new family is covered without an entry here.

FLOPs: per family where the op's arithmetic, not its bytes, can bound it (attention's two matrix
products, the quantized matmul); the row kernels count a few operations per element, which never
bounds them on any chip in chips.py. A family with no entry is modeled on bandwidth alone.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import torch


@dataclasses.dataclass(frozen=True)
class Ideal:
    bytes_read: int
    bytes_written: int
    flops: int | None  # None: not modeled for this family (bandwidth bound assumed)

    @property
    def bytes(self) -> int:
        return self.bytes_read + self.bytes_written


def distinct_bytes(t: torch.Tensor) -> int:
    """Bytes of the distinct elements a tensor view names (broadcast dimensions, stride 0, once)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"expected a Tensor, got {type(t).__name__}")
    n = math.prod(size for size, stride in zip(t.shape, t.stride(), strict=True) if stride != 0)
    return (n if t.numel() else 0) * t.element_size()


def _tensors(values: Sequence[object]) -> list[torch.Tensor]:
    out = []
    for v in values:
        if isinstance(v, torch.Tensor):
            out.append(v)
        elif isinstance(v, (list, tuple)):
            out += _tensors(v)
    return out


# ------------------------------------------------------------------ FLOPs per family


def visible_pairs(sq: int, skv: int, is_causal: bool, window: int) -> int:
    """(query, key) pairs the causal and window masks keep, as the op's mask (top-left aligned)."""
    total = 0
    for i in range(sq):
        hi = min(i, skv - 1) if is_causal else skv - 1
        lo = max(0, i - window + 1) if window > 0 else 0
        total += max(0, hi - lo + 1)
    return total


def _attention_flops(q, k, v, attn_mask=None, scale=None, is_causal=False, window=-1) -> int:
    b, hq, sq, d = q.shape
    dv = v.shape[-1]
    return 2 * b * hq * visible_pairs(sq, k.shape[-2], is_causal, window) * (d + dv)


def _quantized_linear_flops(x, w_packed, scales, biases, group_size, bits, bias=None) -> int:
    rows, k = math.prod(x.shape[:-1]), x.shape[-1]
    return 2 * rows * k * w_packed.shape[0]


FLOPS: dict[str, Callable[..., int]] = {
    "attention": _attention_flops,
    "quantized_linear": _quantized_linear_flops,
}


def ideal(family: str, args: Sequence[object], kwargs: dict, outputs: Sequence[object]) -> Ideal:
    """The ideal of one op call: distinct input bytes read once, output bytes written once, and the
    family's FLOPs where FLOPS models them."""
    if not isinstance(family, str):
        raise TypeError(f"family must be a str, got {type(family).__name__}")
    read = sum(distinct_bytes(t) for t in _tensors([*args, *kwargs.values()]))
    written = sum(t.numel() * t.element_size() for t in _tensors(outputs))
    flops = FLOPS[family](*args, **kwargs) if family in FLOPS else None
    return Ideal(read, written, flops)
