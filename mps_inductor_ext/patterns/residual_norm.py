"""A norm of a residual sum, `h = x + residual; y = norm(h)`, as one op returning (y, h).

A pre-norm transformer layer adds each block's output to the residual stream and normalizes the
sum for the next block, which reads the sum again as its residual:

    h = residual + attn_out              # also the next residual
    y = post_attention_layernorm(h)

Inductor fuses such an add into the norm's kernel; an mpsk norm is an extern kernel to Inductor,
so the add would stay a launch of its own. `mpsk::add_rms_norm` / `mpsk::add_layer_norm` read x
and residual once and write y and h once. The norm itself is whatever the rms_norm or layer_norm
pattern recognizes (patterns/rms_norm.py `find`, patterns/layer_norm.py `find`); this module
only looks at the add feeding it. The add is fused whether or not h has other uses: with none,
writing h costs one row store, which is less than the add's own launch reads and writes.
"""

from __future__ import annotations

import operator
from collections.abc import Callable

from torch.fx import Node

from . import NearMiss, Norm, Rewrite
from .fx import insert_call, is_op, operands, tensor


def fuse(found: Norm | NearMiss | None, kind: str, op: Callable) -> Rewrite | NearMiss | None:
    """The fused form of the norm `found` when its input is a residual add, else None (the plain
    norm's pattern, later in the registry, then takes it)."""
    if not isinstance(found, Norm):
        return None
    add, casts = _under_same_dtype_casts(found.x)
    if not is_op(add, "add") or len(add.args) + len(add.kwargs) != 2:  # an alpha= is not a plain sum
        return None
    x, residual = operands(add)
    xt, rt, ht = tensor(x), tensor(residual), tensor(add)
    if xt is None or rt is None or ht is None:
        return None
    if xt.shape != rt.shape:
        return NearMiss(kind, found.anchor, f"the residual add broadcasts {tuple(xt.shape)} with "
                                            f"{tuple(rt.shape)}; the fused op adds tensors of one shape")
    if not xt.dtype == rt.dtype == ht.dtype:
        return NearMiss(kind, found.anchor, f"the residual add mixes {xt.dtype} and {rt.dtype}; the fused op "
                                            f"adds in one dtype")
    inner = {found.anchor, *found.matched, *casts}
    order = {n: i for i, n in enumerate(add.graph.nodes)}
    if any(order[u] < order[found.anchor] for v in (add, *casts) for u in v.users if u not in inner):
        return NearMiss(kind, found.anchor, "the residual sum is used before the norm's result is; the fused op "
                                            "computes both at the norm")

    def build(graph):
        fused = insert_call(graph, found.anchor, op, (x, residual, *found.args))
        for key in ("example_value", "val"):
            if key in found.anchor.meta:
                fused.meta[key] = (found.anchor.meta[key], add.meta.get(key))
        with graph.inserting_after(fused):
            h = graph.call_function(operator.getitem, (fused, 1))
            y = graph.call_function(operator.getitem, (fused, 0))
        for out, value in ((y, found.anchor), (h, add)):
            for key in ("example_value", "val"):
                if key in value.meta:
                    out.meta[key] = value.meta[key]
        for v in (add, *casts):  # the casts are the sum itself, so their readers read h too
            v.replace_all_uses_with(h, delete_user_cb=lambda user: user not in inner)
        return y

    return Rewrite(kind, found.anchor, [x, residual, *found.affine], build, [*found.matched, *casts, add])


def _under_same_dtype_casts(node: object) -> tuple[object, list[Node]]:
    """The value under casts to the dtype it already has (torch.export keeps `x.to(torch.float32)` of
    a float32 x as a node, and later readers of x may read the cast), and those casts."""
    casts = []
    while is_op(node, "to") and isinstance(node.args[0], Node):
        t, inner = tensor(node), tensor(node.args[0])
        if t is None or inner is None or t.dtype != inner.dtype:
            break
        casts.append(node)
        node = node.args[0]
    return node, casts
