"""RoPE: `x * cos + rotate(x) * sin` as Llama, NeoX, Phi and GPT-J write it.

    x1, x2 = x[..., : D // 2], x[..., D // 2 :]          # or x.chunk(2, dim=-1)
    rotate_half(x) = torch.cat((-x2, x1), dim=-1)         # Llama / NeoX: interleaved=False
    rotate_every_two(x) = torch.stack((-x[..., 1::2], x[..., ::2]), dim=-1).flatten(-2)   # GPT-J
    out = (x * cos) + (rotate(x) * sin)                   # either order of each product and of the sum

Partial rotary (NeoX, Phi, StableLM, GPT-J with rotary_dim) rotates `x[..., :R]` and
concatenates the untouched `x[..., R:]`: `cat((out, x[..., R:]), dim=-1)` folds in, so the op
reads x whole. Anchored at the add; cos and sin are whatever multiplies (HF's tables after
`unsqueeze(1)`, GPT-J's after `repeat_interleave(.., 2, 3)`: one value per feature, which is
what the op takes). The op's (B, H, S, D) is any 4-D layout cos/sin broadcast to, so GPT-J's
(B, S, H, D) with (B, S, 1, R) tables is served as it stands.

Sizes may be symbolic (a dynamic head dim): they are compared only where the shape
environment proves the answer, never guessed, since a pass after Dynamo cannot add guards.
"""

from __future__ import annotations

import torch
from torch.fx import Node
from torch.fx.experimental.symbolic_shapes import statically_known_true

from . import NearMiss, Rewrite, rope_deepseek, supported_dtype
from .fx import (
    arg,
    cast_target,
    constant,
    insert_call,
    insert_cast,
    is_op,
    last_dim,
    last_dim_slice,
    only_user,
    operands,
    tensor,
)

KIND = "rope"


def match(node: Node) -> Rewrite | NearMiss | None:
    if is_op(node, "cat", "flatten"):
        return rope_deepseek.match(node)  # DeepSeek's layouts, in their own module
    if not is_op(node, "add") or len(node.args) + len(node.kwargs) != 2:  # no alpha=
        return None
    a, b = operands(node)
    for px, pr in ((a, b), (b, a)):
        found = _products(px, pr)
        if found is not None:
            return _check(node, *found)
    return None


def _products(px: object, pr: object) -> tuple | None:
    """px = x * cos and pr = rotate(x) * sin (operands in either order), or None."""
    if not (is_op(px, "mul") and is_op(pr, "mul")):
        return None
    for rot, sin in _pairs(pr):
        found = _rotation(rot)
        if found is None:
            continue
        x, interleaved, nodes = found
        for x_, cos in _pairs(px):
            if _same_value(x_, x) and isinstance(cos, Node) and isinstance(sin, Node):
                twin = [x_] if x_ is not x else []
                return x, cos, sin, interleaved, [px, pr, *nodes, *twin]
    return None


def _same_value(a: object, b: object) -> bool:
    """`a is b`, or two casts of one tensor to one dtype (ModernBERT and ESM write `q.float()` once
    for each product)."""
    if a is b:
        return True
    return (isinstance(a, Node) and isinstance(b, Node) and cast_target(a) is not None
            and cast_target(a) == cast_target(b) and a.args[0] is b.args[0])


def _pairs(mul: Node) -> tuple[tuple[object, object], ...]:
    a, b = operands(mul)
    return (a, b), (b, a)


def _rotation(node: object) -> tuple[Node, bool, list[Node]] | None:
    """The x that `node` rotates, whether interleaved, and the rotation's nodes."""
    if is_op(node, "cat") and last_dim(constant(arg(node, 1, "dim", 0)), _rank(node)):
        pair = _neg_pair(arg(node, 0, "tensors"))
        if pair is None:
            return None
        (x2, neg), x1 = pair
        halves = _halves(x1, x2)
        return None if halves is None else (halves[0], False, [node, neg, x1, x2, *halves[1]])
    if (is_op(node, "flatten", "reshape") and node.args and is_op(stack := node.args[0], "stack")
            and last_dim(constant(arg(stack, 1, "dim", 0)), _rank(stack))):
        pair = _neg_pair(arg(stack, 0, "tensors"))
        if pair is None:
            return None
        (x2, neg), x1 = pair
        s1, s2 = last_dim_slice(x1), last_dim_slice(x2)
        if not (s1 and s2 and s1[0] is s2[0] and _slice_is(s1, 0, None, 2) and _slice_is(s2, 1, None, 2)):
            return None
        x = s1[0]
        if not _same_shape(tensor(node), tensor(x)):  # the flatten / reshape undoes the stack's split
            return None
        return x, True, [node, stack, neg, x1, x2]
    return None


def _neg_pair(tensors: object) -> tuple[tuple[Node, Node], Node] | None:
    """((x2, neg), x1) for the sequence (-x2, x1)."""
    if not isinstance(tensors, (list, tuple)) or len(tensors) != 2:
        return None
    neg, x1 = tensors
    if not is_op(neg, "neg") or not isinstance(x1, Node):
        return None
    return (neg.args[0], neg), x1


def _halves(x1: object, x2: object) -> tuple[Node, list[Node]] | None:
    """x with x1 = x[..., :D/2] and x2 = x[..., D/2:] (slices or x.chunk(2, -1)), and extra nodes."""
    if is_op(x1, "getitem") and is_op(x2, "getitem") and x1.args[0] is x2.args[0] and is_op(x1.args[0], "chunk"):
        chunk = x1.args[0]
        x = chunk.args[0]
        if (x1.args[1], x2.args[1]) != (0, 1) or constant(arg(chunk, 1, "chunks")) != 2 \
                or not last_dim(constant(arg(chunk, 2, "dim", 0)), _rank(x)):
            return None
        return x, [chunk]
    s1, s2 = last_dim_slice(x1), last_dim_slice(x2)
    if not (s1 and s2 and s1[0] is s2[0]):
        return None
    x = s1[0]
    size = _size(x)  # whether it is even (so the halves are equal) is _check's to say
    if size is None or not (_slice_is(s1, 0, size // 2, 1) and _slice_is(s2, size // 2, None, 1)):
        return None
    return x, []


def _slice_is(s: tuple, start: object, stop: object, step: object) -> bool:
    """Whether a `last_dim_slice` result is provably x[..., start:stop:step]."""
    return _eq(s[1], start) and _eq(s[2], stop) and _eq(s[3], step)


def _eq(a: object, b: object) -> bool:
    """a == b, provably (ints or SymInts); None equals only None."""
    if a is None or b is None:
        return a is b
    return statically_known_true(a == b)


def _even(n: object) -> bool:
    return n is not None and statically_known_true(n % 2 == 0)


def _rank(node: object) -> int:
    t = tensor(node)
    return -1 if t is None else t.dim()


def _size(node: object, dim: int = -1) -> object:
    t = tensor(node)
    return None if t is None or t.dim() == 0 else t.shape[dim]


def _same_shape(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    return a is not None and b is not None and a.dim() == b.dim() and all(map(_eq, a.shape, b.shape))


def _broadcasts(t: torch.Tensor, full: tuple) -> bool:
    pairs = zip(reversed(t.shape), reversed(full), strict=False)
    return t.dim() <= len(full) and all(_eq(n, 1) or _eq(n, m) for n, m in pairs)


def _check(add: Node, x: Node, cos: Node, sin: Node, interleaved: bool, matched: list[Node]) -> Rewrite | NearMiss:
    allowed = {*matched, add}
    for n in matched:
        if not set(n.users) <= allowed:
            return NearMiss(KIND, add, f"an intermediate ({n.name}) is used elsewhere, which the op cannot serve")
    anchor, full, extra = _partial(add, x, matched)
    xt, ct, st, out = tensor(full), tensor(cos), tensor(sin), tensor(add)
    if xt is None or ct is None or st is None or out is None:
        return NearMiss(KIND, add, "shapes or dtypes are unknown")
    why = supported_dtype(full, cos, sin)
    if why:
        return NearMiss(KIND, add, why)
    dtype = out.dtype
    if torch.promote_types(torch.promote_types(xt.dtype, ct.dtype), st.dtype) != dtype:
        return NearMiss(KIND, add, f"x is {xt.dtype}, cos and sin are {ct.dtype}, {st.dtype}, and the result is "
                                   f"{dtype}: not the promoted math the op can reproduce")
    if xt.dim() != 4:
        return NearMiss(KIND, add, f"x has {xt.dim()} dimensions; the op takes (B, H, S, D)")
    rot = _size(x)
    if not (_eq(_size(cos), rot) and _eq(_size(sin), rot)):
        return NearMiss(KIND, add, "cos and sin do not hold one value per rotated feature")
    if not _even(rot):
        return NearMiss(KIND, add, f"the rotary dimension {rot} is not provably even")
    full4 = (*xt.shape[:3], rot)
    if not (_broadcasts(ct, full4) and _broadcasts(st, full4) and _same_shape(out, tensor(x))):
        return NearMiss(KIND, add, f"cos {tuple(ct.shape)} and sin {tuple(st.shape)} do not broadcast to "
                                   f"(B, H, S, R) = {full4} without growing x")

    def build(graph):
        # Mixed dtypes (autocast: q and k leave a Linear in bf16, cos and sin stay fp32) compute in the
        # promoted dtype: the op gets its inputs upcast to it, which is exact.
        args = [t if tensor(t).dtype == dtype else insert_cast(graph, anchor, t, dtype) for t in (full, cos, sin)]
        return insert_call(graph, anchor, torch.ops.mpsk.rope.default, (*args, interleaved))

    detail = ("interleaved" if interleaved else "rotate_half") + (", partial rotary" if extra else "")
    if xt.dtype != dtype:
        detail += f", {xt.dtype} x upcast to {dtype}"
    return Rewrite(KIND, anchor, [full, cos, sin], build, [add, *matched, *extra], detail)


def _partial(add: Node, x: Node, matched: list[Node]) -> tuple[Node, Node, list[Node]]:
    """(anchor, tensor the op reads, extra nodes): `cat((rope(full[..., :R]), full[..., R:]), -1)`
    folds into a rope of `full`; anything else is a rope of x as it stands."""
    cat, head = only_user(add), last_dim_slice(x)
    if cat is None or not is_op(cat, "cat") or head is None or not _slice_is(head, 0, _size(x), 1):
        return add, x, []
    full = head[0]
    parts = arg(cat, 0, "tensors")
    if not (isinstance(parts, (list, tuple)) and len(parts) == 2 and parts[0] is add
            and last_dim(constant(arg(cat, 1, "dim", 0)), _rank(cat))):
        return add, x, []
    rest = last_dim_slice(parts[1])
    if rest is None or rest[0] is not full or not _slice_is(rest, _size(x), None, 1):
        return add, x, []
    if not set(x.users) <= set(matched) or only_user(parts[1]) is not cat:
        return add, x, []
    return cat, full, [x, parts[1]]
