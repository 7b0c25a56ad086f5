"""Where no Metal kernel runs, the mpsk ops decompose into their ATen math, which Inductor compiles
as ordinary code for the device (fused with its neighbours) rather than calling the op.

Each family's op gets an entry in Inductor's decomposition table: its ATen reference, which
declines (returns NotImplemented, keeping the op for its Metal lowering) where a kernel runs
(`ops.common.metal_runtime`, the eager op's own choice) unless `tune` measured the native op
faster for calls of this shape bucket on this machine (`tuning.prefers_native`, as the eager op).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch._inductor import decomposition

from .. import tuning
from ..families import FAMILIES
from ..ops.common import metal_runtime


def _unless_metal(name: str, op: torch._ops.OpOverload,
                  reference: Callable[..., torch.Tensor]) -> Callable[..., object]:
    def decompose(first: torch.Tensor, *args, **kwargs):
        if metal_runtime(first.device, first.dtype) is not None and not tuning.prefers_native(
                name, tuning.schema_args(op, (first, *args), kwargs)):
            return NotImplemented
        return reference(first, *args, **kwargs)

    return decompose


def _table() -> dict:
    return {family.custom_op: _unless_metal(family.name, family.custom_op, family.resolve("reference"))
            for family in FAMILIES}


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
