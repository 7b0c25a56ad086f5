"""RoPE as DeepSeek writes it: two forms that compute the op's rotation with other layouts.

V3 (`apply_rotary_pos_emb_interleave`, `rope_interleave=True`) reads the pairs (x[2i], x[2i+1]) and
writes the two halves, with per-pair tables c, s (HF's cos[..., :R/2]):

    x1, x2 = x[..., 0::2], x[..., 1::2]
    out = cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1)           # anchored at the cat

which is the half-split rotation of the de-interleaved x = cat([x1, x2], -1) with tables
cat([c, c], -1), cat([s, s], -1): x1 * c + (-x2) * s is exactly x1 * c - x2 * s.

V2 (`apply_rotary_emb`) multiplies complex numbers, with complex tables f = cos + i sin per pair:

    xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    out = torch.view_as_real(xc * f).flatten(3)                      # anchored at the flatten

(a + ib)(c + is) = (ac - bs) + i(as + bc): the interleaved rotation of x with tables that repeat
each pair's c and s twice, read from view_as_real(f).
"""

from __future__ import annotations

import torch
from torch.fx import Graph, Node

from . import NearMiss, Rewrite, supported_dtype
from .fx import arg, constant, insert_call, insert_cast, is_op, last_dim, last_dim_slice, operands, tensor, val

KIND = "rope"


def match(node: Node) -> Rewrite | NearMiss | None:
    if is_op(node, "cat"):
        return _v3_interleaved(node)
    if is_op(node, "flatten"):
        return _v2_complex(node)
    return None


def _new(graph: Graph, anchor: Node, fn, *args) -> Node:
    """`fn(*args)` before `anchor`, with the value it computes on the recorded (fake) values."""
    aten = isinstance(anchor.target, torch._ops.OpOverload)
    with graph.inserting_before(anchor):
        new = graph.call_function(fn, args)
    plain = [[val(a) for a in x] if isinstance(x, (list, tuple)) else val(x) for x in args]
    new.meta["val" if aten else "example_value"] = fn(*plain)
    return new


def _products(node: object, kind: str) -> tuple[Node, Node, Node, Node] | None:
    """(a, b, c, d) for `a * b <kind> c * d` (the sum's operands in either order for an add)."""
    if not is_op(node, kind) or len(node.args) + len(node.kwargs) != 2:
        return None
    p, q = operands(node)
    if not (is_op(p, "mul") and is_op(q, "mul")):
        return None
    return (*operands(p), *operands(q))


def _v3_interleaved(cat: Node) -> Rewrite | NearMiss | None:
    parts = arg(cat, 0, "tensors")
    if not (isinstance(parts, (list, tuple)) and len(parts) == 2 and tensor(cat) is not None
            and last_dim(constant(arg(cat, 1, "dim", 0)), tensor(cat).dim())):
        return None
    first, second = _products(parts[0], "sub"), _products(parts[1], "add")
    if first is None or second is None:
        return None
    found = _v3_operands(first, second)
    if found is None:
        return None
    x, x1, x2, c, s = found
    muls = [*operands(parts[0]), *operands(parts[1])]
    matched = [*parts, *muls]
    for n in matched:
        if not set(n.users) <= {*matched, cat}:
            return NearMiss(KIND, cat, f"an intermediate ({n.name}) is used elsewhere, which the op cannot serve")
    why = _tables_and_dtypes(cat, x, c, s, half=True)
    if why:
        return NearMiss(KIND, cat, why)
    dtype = tensor(cat).dtype
    slices = [n for n in (x1, x2) if set(n.users) <= set(muls)]

    def build(graph):
        xd = _new(graph, cat, torch.cat, [x1, x2], -1)
        cos, sin = _new(graph, cat, torch.cat, [c, c], -1), _new(graph, cat, torch.cat, [s, s], -1)
        args = [t if tensor(t).dtype == dtype else insert_cast(graph, cat, t, dtype) for t in (xd, cos, sin)]
        return insert_call(graph, cat, torch.ops.mpsk.rope.default, (*args, False))

    detail = "DeepSeek V3 interleaved pairs, de-interleaved into rotate_half"
    return Rewrite(KIND, cat, [x, c, s], build, [*matched, *slices], detail)


def _v3_operands(first: tuple, second: tuple) -> tuple | None:
    """(x, x1, x2, c, s) when first = x1 * c - x2 * s and second = x2 * c + x1 * s, with x1 and x2
    the even and odd features of x (each product's operands in either order)."""
    for a, b, p, q in ((first[0], first[1], first[2], first[3]), (first[1], first[0], first[2], first[3]),
                       (first[0], first[1], first[3], first[2]), (first[1], first[0], first[3], first[2])):
        x1, c, x2, s = a, b, p, q
        e, o = last_dim_slice(x1), last_dim_slice(x2)
        if not (e and o and e[0] is o[0] and tuple(e[1:]) == (0, None, 2) and tuple(o[1:]) == (1, None, 2)):
            continue
        pairs = {frozenset((x2, c)), frozenset((x1, s))}
        got = {frozenset(second[:2]), frozenset(second[2:])}
        if pairs == got and isinstance(c, Node) and isinstance(s, Node):
            return e[0], x1, x2, c, s
    return None


def _tables_and_dtypes(anchor: Node, x: Node, c: Node, s: Node, half: bool) -> str | None:
    """Why x (B, H, S, D) and tables of D/2 (half) or D features cannot take the op, or None."""
    xt, ct, st, out = tensor(x), tensor(c), tensor(s), tensor(anchor)
    if xt is None or ct is None or st is None or out is None:
        return "shapes or dtypes are unknown"
    why = supported_dtype(x, c, s)
    if why:
        return why
    if torch.promote_types(torch.promote_types(xt.dtype, ct.dtype), st.dtype) != out.dtype:
        return (f"x is {xt.dtype}, cos and sin are {ct.dtype}, {st.dtype}, and the result is {out.dtype}: "
                "not the promoted math the op can reproduce")
    if xt.dim() != 4 or tuple(out.shape) != tuple(xt.shape):
        return f"x has shape {tuple(xt.shape)}; the op takes (B, H, S, D) and returns its shape"
    d = xt.shape[-1]
    if not (isinstance(d, int) and d % 2 == 0):
        return f"the rotary dimension {d} is not a known even size"
    want = d // 2 if half else d
    for t in (ct, st):
        full = (*xt.shape[:3], want)
        if t.dim() > 4 or t.shape[-1] != want or any(n not in (1, m) for n, m in zip(t.shape[::-1], full[::-1],
                                                                                      strict=False)):
            return f"the tables {tuple(t.shape)} do not broadcast to (B, H, S, {want}) without growing x"
    return None


def _is_fn(node: object, fn, aten) -> bool:
    return isinstance(node, Node) and node.op == "call_function" and node.target in (fn, aten)


def _v2_complex(flatten: Node) -> Rewrite | NearMiss | None:
    real = flatten.args[0] if flatten.args else None
    if not _is_fn(real, torch.view_as_real, torch.ops.aten.view_as_real.default):
        return None
    out, rt = tensor(flatten), tensor(real)
    if out is None or rt is None or rt.dim() != 5 or out.dim() != 4:
        return None  # the flatten folds the (re, im) pairs of a (B, H, S, D/2, 2) product into D
    prod = real.args[0]
    if not is_op(prod, "mul") or len(prod.args) + len(prod.kwargs) != 2:
        return None
    for xc, f in (operands(prod), operands(prod)[::-1]):
        if not _is_fn(xc, torch.view_as_complex, torch.ops.aten.view_as_complex.default):
            continue
        pairs = xc.args[0]
        if not is_op(pairs, "reshape") or not isinstance(f, Node) or tensor(f) is None:
            continue
        x = pairs.args[0]
        xt, pt = tensor(x), tensor(pairs)
        if xt is None or pt is None or tuple(pt.shape) != (*xt.shape[:-1], xt.shape[-1] // 2, 2):
            continue
        return _v2_rewrite(flatten, real, prod, xc, pairs, x, f)
    return None


def _v2_rewrite(flatten: Node, real: Node, prod: Node, xc: Node, pairs: Node, x: Node, f: Node) -> Rewrite | NearMiss:
    matched = [real, prod, xc, pairs]
    for n in matched:
        if not set(n.users) <= {*matched, flatten}:
            return NearMiss(KIND, flatten, f"an intermediate ({n.name}) is used elsewhere, which the op cannot serve")
    ft = tensor(f)
    if not ft.is_complex():
        return NearMiss(KIND, flatten, f"the tables are {ft.dtype}, not complex")
    table = ft.real  # the dtype and shape of each of cos and sin, per pair
    xt = tensor(x)
    why = supported_dtype(x) or (None if table.dtype == xt.dtype else
                                 f"x is {xt.dtype} but the complex tables are {ft.dtype}; the op takes one dtype")
    if why is None and (ft.dim() > 4 or any(n not in (1, m) for n, m in zip(ft.shape[::-1], (*xt.shape[:3],
                                                                                             xt.shape[-1] // 2)[::-1],
                                                                              strict=False))):
        why = f"the complex tables {tuple(ft.shape)} do not broadcast to (B, H, S, D/2) without growing x"
    if why is None and xt.dim() != 4:
        why = f"x has {xt.dim()} dimensions; the op takes (B, H, S, D)"
    if why:
        return NearMiss(KIND, flatten, why)

    def build(graph):
        ri = _new(graph, flatten, torch.view_as_real, f)
        c, s = _new(graph, flatten, torch.select, ri, -1, 0), _new(graph, flatten, torch.select, ri, -1, 1)
        cos = _new(graph, flatten, torch.repeat_interleave, c, 2, -1)
        sin = _new(graph, flatten, torch.repeat_interleave, s, 2, -1)
        return insert_call(graph, flatten, torch.ops.mpsk.rope.default, (x, cos, sin, True))

    return Rewrite(KIND, flatten, [x, f], build, matched, "DeepSeek V2 complex product, as interleaved pairs")
