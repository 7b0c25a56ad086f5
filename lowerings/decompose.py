"""Where no Metal kernel runs, the mpsk ops decompose into their ATen math, which Inductor compiles
as ordinary code for the device (fused with its neighbours) rather than calling the op.

Each op's entry in Inductor's decomposition table declines (returns NotImplemented, keeping the op
for its Metal lowering) when its input is on MPS, or on the CPU under `config.emulate_metal`: the
device choice `ops.common.metal_backend` makes for the eager op.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch._inductor import decomposition

from ..ops.attention import attention_reference
from ..ops.common import metal_backend
from ..ops.norm import layer_norm_reference, rms_norm_reference
from ..ops.rope import rope_reference
from ..ops.softmax import softmax_reference


def _unless_metal(reference: Callable[..., torch.Tensor]) -> Callable[..., object]:
    def decompose(first: torch.Tensor, *args, **kwargs):
        if metal_backend(first) is not None:
            return NotImplemented
        return reference(first, *args, **kwargs)

    return decompose


def _table() -> dict:
    mpsk = torch.ops.mpsk
    return {
        mpsk.rms_norm.default: _unless_metal(rms_norm_reference),
        mpsk.layer_norm.default: _unless_metal(layer_norm_reference),
        mpsk.softmax.default: _unless_metal(softmax_reference),
        mpsk.rope.default: _unless_metal(rope_reference),
        mpsk.attention.default: _unless_metal(attention_reference),
    }


def install() -> None:
    """Adds the decompositions to Inductor's table (idempotent; select_decomp_table caches a copy)."""
    table = _table()
    if table.keys() <= decomposition.decompositions.keys():
        return
    decomposition.decompositions.update(table)
    decomposition.fast_random_decomps.cache_clear()


def uninstall() -> None:
    for op in _table():
        decomposition.decompositions.pop(op, None)
    decomposition.fast_random_decomps.cache_clear()
