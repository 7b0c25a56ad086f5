"""LayerNorm: F.layer_norm / nn.LayerNorm over the last dimension, and the form written out by hand.

    h = x.to(torch.float32)                                  # optional upcast
    mean = h.mean(-1, keepdim=True)
    variance = (h - mean).pow(2).mean(-1, keepdim=True)
    y = (h - mean) * torch.rsqrt(variance + eps)             # `h - mean` written once or twice
    out = (w.to(torch.float32) * y + b).to(x.dtype)          # weight and bias optional (Cohere: no bias)

Cohere's CohereLayerNorm (Command-R, Aya) is this form; the written-out form is anchored at the
rsqrt, as the written-out RMSNorm is (which needs a square of h itself, so the two never both match).
"""

from __future__ import annotations

import torch
from torch.fx import Node

from . import NearMiss, Norm, Rewrite, supported_dtype
from .fx import (
    arg,
    cast_chain,
    constant,
    follow_casts,
    is_op,
    is_scalar,
    last_dim,
    only_user,
    op_name,
    operands,
    other_operand,
    scalar,
    scalar_nodes,
    strip_casts,
    tensor,
)

KIND = "layer_norm"


def match(node: Node) -> Rewrite | NearMiss | None:
    found = find(node)
    return found.rewrite() if isinstance(found, Norm) else found


def find(node: Node) -> Norm | NearMiss | None:
    """The LayerNorm at `node`, before it is turned into a rewrite (add_layer_norm extends it)."""
    if op_name(node) == "rsqrt":
        return _written_out(node)
    if op_name(node) != "layer_norm":
        return None
    x, weight, bias = arg(node, 0, "input"), arg(node, 2, "weight"), arg(node, 3, "bias")
    shape, eps = constant(arg(node, 1, "normalized_shape")), arg(node, 4, "eps", 1e-5)
    xt = tensor(x)
    if xt is None:
        return None
    if not isinstance(shape, (list, tuple)) or len(shape) != 1:
        return NearMiss(KIND, node, "normalizes over more than the last dimension")
    if not is_scalar(eps):
        return NearMiss(KIND, node, "eps is computed at run time; the kernel needs it at compile time")
    why = _affine_dtypes(x, weight, bias)
    if why:
        return NearMiss(KIND, node, why)
    return _norm(node, x, weight, bias, eps, [])


def _affine_dtypes(x: object, weight: object, bias: object) -> str | None:
    why = supported_dtype(x, weight, bias)
    xt = tensor(x)
    for name, t in (("weight", weight), ("bias", bias)):
        tt = tensor(t)
        if why is None and t is not None and (tt is None or tt.dtype != xt.dtype):
            why = f"the {name} is {getattr(tt, 'dtype', 'unknown')} but the input is {xt.dtype}"
    return why


def _norm(anchor: Node, x: object, weight: object, bias: object, eps: object, matched: list[Node]) -> Norm:
    return Norm(KIND, torch.ops.mpsk.layer_norm.default, anchor, x, (weight, bias, scalar(eps)),
                [t for t in (weight, bias) if t is not None], matched + scalar_nodes(eps))


def _mean_last(node: object) -> object:
    """a for `a.mean(-1, keepdim=True)`, else None."""
    if not is_op(node, "mean") or tensor(node.args[0]) is None:
        return None
    a = node.args[0]
    if last_dim(constant(arg(node, 1, "dim")), tensor(a).dim()) and constant(arg(node, 2, "keepdim", False)) is True:
        return a
    return None


def _centered(node: object) -> tuple[object, Node] | None:
    """(h, mean) for `h - h.mean(-1, keepdim=True)`."""
    if not is_op(node, "sub") or len(node.args) + len(node.kwargs) != 2:
        return None
    h, mean = operands(node)
    return (h, mean) if isinstance(h, Node) and _mean_last(mean) is h else None


def _written_out(rsqrt: Node) -> Rewrite | NearMiss | None:
    add = rsqrt.args[0]
    if not is_op(add, "add"):
        return None
    a, b = operands(add)
    var, eps = (a, b) if is_op(a, "mean") else (b, a)
    square = _mean_last(var)
    if not is_scalar(eps) or not (is_op(square, "pow") and constant(arg(square, 1, "exponent")) == 2):
        return None
    centered = _centered(square.args[0])
    scaled = only_user(rsqrt)
    if centered is None or scaled is None or not is_op(scaled, "mul"):
        return None
    h, mean = centered
    d1, d2 = square.args[0], other_operand(scaled, rsqrt)
    if d2 is not d1 and _centered(d2) != (h, mean):
        return None
    matched = list(dict.fromkeys([mean, d1, d2, square, var, add, rsqrt]))
    for n in matched:
        if not set(n.users) <= {*matched, scaled}:
            return NearMiss(KIND, rsqrt, f"an intermediate ({n.name}) is used elsewhere, which the op cannot serve")
    x = strip_casts(h)
    if h is not x:
        if set(h.users) <= set(matched):
            matched.append(h)
        else:
            x = h  # the upcast is read elsewhere too: normalize the upcast value
    matched.append(scaled)

    # Outwards: casts, an optional weight (possibly cast), an optional bias, casts.
    out = follow_casts(scaled, matched)
    weight = bias = None
    for kind in ("mul", "add"):
        user = only_user(out)
        if user is None or not is_op(user, kind):
            continue
        base, casts = cast_chain(other_operand(user, out))
        bt = tensor(base)
        if not isinstance(base, Node) or bt is None or bt.dim() != 1:
            break
        if kind == "mul":
            weight = base
        else:
            bias = base
        matched += [out, *casts]
        out = follow_casts(user, matched)
    xt, ot = tensor(x), tensor(out)
    if xt is None or ot is None:
        return NearMiss(KIND, out, "shapes or dtypes are unknown")
    why = _affine_dtypes(x, weight, bias)
    if why is None and ot.dtype != xt.dtype:
        why = f"the result is {ot.dtype} but the input is {xt.dtype}; the op returns the input's dtype"
    for name, t in (("weight", weight), ("bias", bias)):
        if why is None and t is not None and tensor(t).shape[0] != xt.shape[-1]:
            why = f"the {name} is not the size of the last dimension"
    if why:
        return NearMiss(KIND, out, why)
    return _norm(out, x, weight, bias, eps, matched)
