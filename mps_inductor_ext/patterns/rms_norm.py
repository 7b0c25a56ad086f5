"""RMSNorm: F.rms_norm / nn.RMSNorm, and the forms written out by hand.

    h = x.to(torch.float32)                            # optional upcast
    y = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    out = w * y.to(x.dtype)                             # Llama; or y * (1.0 + w.float()) (Gemma); or no weight

The written-out form is anchored at the rsqrt and followed outwards. Every
intermediate must feed only the next step, or the op could not serve its other
uses; q/k-norm over the head dimension is the same form on a 4-D tensor.
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

KIND = "rms_norm"


def match(node: Node) -> Rewrite | NearMiss | None:
    found = find(node)
    return found.rewrite() if isinstance(found, Norm) else found


def find(node: Node) -> Norm | NearMiss | None:
    """The RMSNorm anchored at `node`, before it is turned into a rewrite (add_rms_norm extends it)."""
    if op_name(node) == "rms_norm":
        return _functional(node)
    if op_name(node) == "rsqrt":
        return _written_out(node)
    return None


def _rewrite(anchor: Node, x: object, weight: object, eps: object, offset: float, matched: list[Node]) -> Norm:
    return Norm(KIND, torch.ops.mpsk.rms_norm.default, anchor, x, (weight, scalar(eps), offset),
                [weight] if weight is not None else [], matched + scalar_nodes(eps))


def _checks(anchor: Node, x: object, weight: object) -> str | None:
    xt, out = tensor(x), tensor(anchor)
    if xt is None or out is None:
        return "shapes or dtypes are unknown"
    why = supported_dtype(x, weight)
    if why:
        return why
    if out.dtype != xt.dtype:
        return f"the result is {out.dtype} but the input is {xt.dtype}; the op returns the input's dtype"
    w = tensor(weight)
    if weight is not None:
        if w is None or w.dim() != 1 or w.shape[0] != xt.shape[-1]:
            return "the weight is not a 1-D tensor the size of the last dimension"
        if w.dtype != xt.dtype:
            return f"the weight is {w.dtype} but the input is {xt.dtype}"
    return None


def _functional(node: Node) -> Norm | NearMiss | None:
    x = arg(node, 0, "input")
    shape = constant(arg(node, 1, "normalized_shape"))
    weight = arg(node, 2, "weight")
    eps = arg(node, 3, "eps")
    xt = tensor(x)
    if xt is None:
        return None
    if not isinstance(shape, (list, tuple)) or len(shape) != 1:
        return NearMiss(KIND, node, "normalizes over more than the last dimension")
    if eps is not None and not is_scalar(eps):
        return NearMiss(KIND, node, "eps is computed at run time; the kernel needs it at compile time")
    if eps is None:
        eps = torch.finfo(xt.dtype).eps
    why = _checks(node, x, weight)
    if why:
        return NearMiss(KIND, node, why)
    return _rewrite(node, x, weight, eps, 0.0, [])


def _written_out(rsqrt: Node) -> Norm | NearMiss | None:
    add = rsqrt.args[0]
    if not is_op(add, "add"):
        return None
    a, b = operands(add)
    mean, eps = (a, b) if is_op(a, "mean") else (b, a)
    if not is_op(mean, "mean") or not is_scalar(eps):
        return None
    square = mean.args[0]
    if not (is_op(square, "pow") and constant(arg(square, 1, "exponent")) == 2):
        return None
    h = square.args[0]
    ht = tensor(h)
    if ht is None:
        return None
    if not (last_dim(constant(arg(mean, 1, "dim")), ht.dim()) and constant(arg(mean, 2, "keepdim", False)) is True):
        return NearMiss(KIND, rsqrt, "the mean of squares is not over the last dimension with keepdim=True")
    scaled = only_user(rsqrt)
    if scaled is None or not is_op(scaled, "mul"):
        return None
    x = strip_casts(h)
    other = other_operand(scaled, rsqrt)
    # T5's form squares `x.to(float32)` but scales the uncast x: the same product, since multiplying
    # x by the float32 rsqrt promotes x to float32 exactly as the cast does.
    if other is not h and not (other is x and x is not h and tensor(h).dtype == torch.float32):
        return None
    matched = [square, mean, add, rsqrt, scaled]
    for n in matched[:-1]:
        if len(n.users) != 1:
            return NearMiss(KIND, rsqrt, f"an intermediate ({n.name}) is used elsewhere, which the op cannot serve")
    if h is not x:
        if set(h.users) <= {square, scaled}:
            matched.append(h)
        elif tensor(h).dtype == tensor(x).dtype:
            x = h  # a cast to the dtype it already has (torch.export keeps it, and other uses read it)
        else:
            return NearMiss(KIND, rsqrt, "the upcast input is used elsewhere, which the op cannot serve")

    # Outwards from the normalized value: casts, an optional weight (plain, or Gemma's 1 + w), casts.
    out = follow_casts(scaled, matched)
    weight, offset = None, 0.0
    user = only_user(out)
    if user is not None and is_op(user, "mul"):
        weight, offset, weight_nodes = _weight(other_operand(user, out))
        if weight is not None:
            matched += [out, *weight_nodes]
            out = follow_casts(user, matched)
    why = _checks(out, x, weight)
    if why:
        return NearMiss(KIND, out, why)
    return _rewrite(out, x, weight, eps, offset, matched)


def _weight(w: object) -> tuple[Node | None, float, list[Node]]:
    """The weight multiplying the normalized value: `w`, or Gemma's `1.0 + w`, each possibly cast."""
    offset, nodes = 0.0, []
    if is_op(w, "add"):
        a, b = operands(w)
        if constant(a) in (1, 1.0) and isinstance(b, Node):
            offset, nodes, w = 1.0, [w], b
        elif constant(b) in (1, 1.0) and isinstance(a, Node):
            offset, nodes, w = 1.0, [w], a
        else:
            return None, 0.0, []
    base, casts = cast_chain(w)
    t = tensor(base)
    if not isinstance(base, Node) or t is None or t.dim() != 1:
        return None, 0.0, []
    return base, offset, nodes + casts
