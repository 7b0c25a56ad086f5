"""Attention: F.scaled_dot_product_attention, and eager attention as people write it.

    w = torch.matmul(q, k.transpose(2, 3)) * scale      # or / sqrt(d), or no scale
    w = torch.tanh(w / cap) * cap                         # optional logit softcap (Gemma 2)
    w = w + mask                                          # optional additive float mask (maybe sliced)
                                                          # or two added in turn (T5: bias, then mask)
    w = F.softmax(w, dim=-1, dtype=torch.float32).to(q.dtype)   # or a plain softmax; casts anywhere
    w = F.dropout(w, p=0.0, training=self.training)      # optional; p == 0 or not training
    out = torch.matmul(w, v)

The eager form is anchored at the last matmul and followed back to q, k and v. Hugging
Face's `repeat_kv` (`x[:, :, None].expand(...).reshape(...)`) or `repeat_interleave(n, 1)`
on both k and v is folded into the op's GQA: the op reads the un-repeated k/v. The scores
and weights must feed only the next step: when the weights are also returned
(output_attentions) the fused op cannot produce them, so the place is left to the softmax
family.

Masks are passed on as `attn_mask`, except one provably built from positions alone, as
Hugging Face's mask functions build it: `kv_idx <= q_idx` (causal) and `kv_idx > q_idx - W`
(sliding window) on `arange`s with the same offset, and-ed together, maybe expanded, maybe
turned additive by `where(m, 0, min)`. That folds into `is_causal` / `window`, so the kernel
skips hidden tiles and reads no mask. Anything else in the mask (padding, offsets that differ
as with a KV cache) keeps the mask tensor: slower, never wrong.
"""

from __future__ import annotations

import math
import operator

import torch
from torch.fx import Node
from torch.fx.experimental.symbolic_shapes import statically_known_true

from .. import config
from ..ops.attention import MAX_HEAD_DIM, TG_BUDGET, decode_tg_bytes, prefill_tiles
from . import NearMiss, Rewrite, fx, supported_dtype
from .fx import arg, cast_target, constant, insert_call, is_op, op_name, operands, tensor, val

KIND = "attention"


def match(node: Node) -> Rewrite | NearMiss | None:
    name = op_name(node)
    if name == "sdpa":
        return _sdpa(node)
    if name == "matmul":
        return _eager(node)
    return None


def _same(a: object, b: object) -> bool:
    """a == b without adding a guard: symbolic sizes count as equal only when provably so."""
    return statically_known_true(a == b)


def _differ(a: object, b: object) -> bool:
    return statically_known_true(a != b)


def _rewrite(anchor: Node, q, k, v, mask, scale, is_causal: bool, matched: list[Node], detail: str,
             softcap: object = 0.0) -> Rewrite:
    window = -1
    pair = mask if isinstance(mask, tuple) else None
    folded = None if pair else _positions(mask, tensor(q).shape[2], tensor(k).shape[2])
    if folded is not None:
        causal, window, mask_nodes = folded
        mask, is_causal, matched = None, is_causal or causal, [*matched, *mask_nodes]
        detail += f" (mask folded: is_causal={is_causal}, window={window})"

    dtype = tensor(anchor).dtype
    if any(tensor(t).dtype != dtype for t in (q, k, v)):
        # Only SDPA is matched so: mixed q/k/v dtypes reach it under autocast, which casts all three
        # to the autocast dtype (the result's) before it computes; so does the replacement.
        detail += f" (autocast: q, k, v cast to {dtype})"

    def build(graph):
        qkv = [t if tensor(t).dtype == dtype else fx.insert_cast(graph, anchor, t, dtype) for t in (q, k, v)]
        m = mask if pair is None else _insert_sum(graph, anchor, *pair)
        args = (*qkv, m, None if scale is None else fx.scalar(scale), is_causal, window)
        if softcap:
            args = (*args, fx.scalar(softcap))
        return insert_call(graph, anchor, torch.ops.mpsk.attention.default, args)

    inputs = [q, k, v] + (list(pair) if pair else [mask] if mask is not None else [])
    return Rewrite(KIND, anchor, inputs, build, matched + fx.scalar_nodes(scale) + fx.scalar_nodes(softcap),
                   detail)


def _insert_sum(graph, anchor: Node, bias: Node, mask: Node) -> Node:
    """`bias + mask` before `anchor` (T5's two additive terms, as the op's one mask)."""
    aten = isinstance(anchor.target, torch._ops.OpOverload)
    with graph.inserting_before(anchor):
        new = graph.call_function(torch.ops.aten.add.Tensor if aten else operator.add, (bias, mask))
    new.meta["val" if aten else "example_value"] = tensor(bias) + tensor(mask)
    return new


def _positions(mask: object, q_len: object, kv_len: object) -> tuple[bool, int, list[Node]] | None:
    """(is_causal, window, the mask's nodes) when `mask` is provably a causal and/or sliding-window
    mask on positions i < q_len, j < kv_len; None when it may hold anything else."""
    if not isinstance(mask, Node):
        return None
    nodes, additive = [], False
    m = _strip_views(mask, nodes)
    if is_op(m, "where"):
        additive = True  # additive: 0 where kept, a value that underflows exp() where hidden
        cond, yes, no = (arg(m, 0, "condition"), arg(m, 1, "input"), arg(m, 2, "other"))
        if not (_zero(yes) and isinstance(no, (int, float)) and no <= torch.finfo(torch.float16).min):
            return None
        nodes.append(m)
        m = cond
    terms, pending = [], [m]
    while pending:
        t = _strip_views(pending.pop(), nodes)
        if not isinstance(t, Node) or tensor(t) is None or tensor(t).dtype != torch.bool:
            return None
        nodes.append(t)
        if is_op(t, "and"):
            pending += operands(t)
        elif not is_op(t, "new_ones"):  # new_ones(..., dtype=bool) is all True
            terms.append(t)
    causal, window, offset = False, -1, []
    for t in terms:
        name, (a, b) = op_name(t), operands(t)
        if name in ("ge", "lt"):  # a >= b is b <= a; a < b is b > a
            name, a, b = {"ge": "le", "lt": "gt"}[name], b, a
        kv, q = _index(a, "kv", kv_len), None
        if name == "le":  # j <= i
            q = _index(b, "q", q_len)
            causal = True
        elif name == "gt" and is_op(b, "sub") and isinstance(operands(b)[1], int) and operands(b)[1] > 0:
            q = _index(operands(b)[0], "q", q_len)  # j > i - W
            window = operands(b)[1] if window < 0 else min(window, operands(b)[1])
            nodes.append(b)
        if kv is None or q is None:
            return None
        offset += [kv[0], q[0]]
        nodes += kv[1] + q[1]
    same_offset = all(o is offset[0] or (not isinstance(o, Node) and o == offset[0]) for o in offset)
    if not terms or not same_offset:
        return None
    if additive and window > 0 and not statically_known_true(q_len <= kv_len):
        return None  # query rows past the keys could be fully hidden: 0 from the op, a mean from softmax
    return causal, window, nodes


def _strip_views(m: object, nodes: list[Node]) -> object:
    """Follows what changes no mask value back to its source: expand (broadcasting does the same),
    slices that keep everything, device moves; the steps join `nodes`."""
    while is_op(m, "expand") or _identity_slice(m) or (
            op_name(m) == "to" and tensor(m.args[0]) is not None and cast_target(m) == tensor(m.args[0]).dtype):
        nodes.append(m)
        m = m.args[0]
    return m


def _zero(x: object) -> bool:
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        return x == 0
    return is_op(x, "zeros") or (isinstance(x, Node) and x.target is torch.tensor and x.args[:1] in ((0,), (0.0,)))


def _identity_slice(x: object) -> bool:
    """`m[:, :, :, :n]` that provably keeps every element (HF slices masks to the key length)."""
    if not is_op(x, "getitem") or not isinstance(x.args[1], tuple):
        return False
    if not all(isinstance(i, slice) and i.start in (None, 0) and i.step in (None, 1) for i in x.args[1]):
        return False
    a, b = tensor(x.args[0]), tensor(x)
    return a is not None and b is not None and a.dim() == b.dim() and all(
        _same(s, t) for s, t in zip(a.shape, b.shape, strict=True))


def _index(x: object, axis: str, length: object) -> tuple[object, list[Node]] | None:
    """(offset, nodes) when `x` is `(arange(length) + offset)` laid out along the query rows (axis "q":
    `[..., :, None]`) or the key columns (axis "kv": `[..., None, :]`)."""
    if not is_op(x, "getitem") or not isinstance(x.args[1], tuple):
        return None
    index = x.args[1]
    if any(i is not None and i != slice(None) for i in index) or sum(i is not None for i in index) != 1:
        return None
    if index[-1 if axis == "kv" else -2:] != ((slice(None),) if axis == "kv" else (slice(None), None)):
        return None
    base, offset, nodes = x.args[0], 0, [x]
    if is_op(base, "add"):
        a, b = operands(base)
        base, offset = (a, b) if is_op(a, "arange") else (b, a)
        nodes.append(x.args[0])
    if not is_op(base, "arange") or len(base.args) != 1 or "start" in base.kwargs or "end" in base.kwargs:
        return None
    if isinstance(offset, Node) and tensor(offset) is not None:
        return None  # a tensor offset: per-element, not one position shift
    if not _same(val(base.args[0]), length):
        return None
    return offset, [*nodes, base]


def _checks(anchor: Node, q: object, k: object, v: object, mask: object, autocast: bool = False) -> str | None:
    """Why the op cannot take these operands, or None: the op's own checks, decided at compile time.
    `autocast`: q, k and v may differ from the result's dtype, which they are cast to."""
    qt, kt, vt, out = tensor(q), tensor(k), tensor(v), tensor(anchor)
    if qt is None or kt is None or vt is None or out is None:
        return "shapes or dtypes are unknown"
    why = supported_dtype(q, k, v)
    if why:
        return why
    if not qt.dtype == kt.dtype == vt.dtype == out.dtype and not autocast:
        return f"q, k, v and the result have dtypes {qt.dtype}, {kt.dtype}, {vt.dtype}, {out.dtype}; the op needs one"
    if not qt.dim() == kt.dim() == vt.dim() == 4:
        return f"q, k, v are {qt.dim()}-D, {kt.dim()}-D, {vt.dim()}-D; the op takes (batch, heads, seq, head dim)"
    D, Dv = qt.shape[-1], vt.shape[-1]
    if not (isinstance(D, int) and isinstance(Dv, int)):
        return f"the head dim ({D}, {Dv}) is dynamic; the kernels are specialized on it"
    if not (1 <= D <= MAX_HEAD_DIM and 1 <= Dv <= MAX_HEAD_DIM):
        return f"head dim {D} (v: {Dv}) is outside the 1..{MAX_HEAD_DIM} the Metal kernels take"
    try:
        prefill_tiles(D, Dv, config.attention)
        if decode_tg_bytes(Dv, config.attention, D) > TG_BUDGET:
            raise ValueError("decode threadgroup memory")
    except ValueError:
        return f"head dim {D} (v: {Dv}) does not fit threadgroup memory under config.attention"
    if not _same(kt.shape[-1], D):
        return f"k's head dim {kt.shape[-1]} differs from q's {D}"
    # Batch and lengths: sizes the model's own ops would reject if they differed at run time (and the
    # op's fake implementation guards their equality) need only not be provably different.
    if _differ(kt.shape[0], qt.shape[0]) or _differ(vt.shape[0], qt.shape[0]):
        return "k or v is broadcast over the batch, which the op does not do"
    Hq, Hkv = qt.shape[1], kt.shape[1]
    if not _same(vt.shape[1], Hkv) or _differ(vt.shape[2], kt.shape[2]):
        return "k and v differ in heads or length"
    if not statically_known_true(Hq % Hkv == 0):
        return f"q's {Hq} heads are not provably a multiple of k/v's {Hkv}"
    if mask is None:
        return None
    m = tensor(mask)
    if m is None:
        return "the mask is not a tensor"
    if m.dtype != torch.bool:
        if not m.is_floating_point():
            return f"a {m.dtype} mask; the kernel takes bool or float masks"
        why = supported_dtype(mask)
        if why:
            return f"the mask: {why}"
    target = (qt.shape[0], Hq, qt.shape[2], kt.shape[2])
    tail = target[len(target) - m.dim():] if m.dim() else ()
    # A mask size that is a size symbol (never 1: Dynamo specializes sizes 0 and 1) and not provably
    # different from its target is equal to it at run time, or the model's own SDPA would fail; the
    # op's fake implementation guards that equality.
    def fits(s, t) -> bool:
        return _same(s, 1) or _same(s, t) or (statically_known_true(s >= 2) and not _differ(s, t))

    if m.dim() > 4 or not all(fits(s, t) for s, t in zip(m.shape, tail, strict=True)):
        return f"a mask of shape {tuple(m.shape)} does not broadcast to (B, Hq, Sq, Skv)"
    if m.device != qt.device:
        return f"the mask is on {m.device} but q is on {qt.device}"
    return None


def _unrepeat(x: object) -> tuple[object, list[Node]]:
    """The tensor before a head repeat along dim 1 (HF's repeat_kv, or repeat_interleave), with the
    repeat's nodes; `x` itself when it is not one. Shapes prove the form, whatever the spelling."""
    xt = tensor(x)
    if not isinstance(x, Node) or xt is None or xt.dim() != 4:
        return x, []
    if is_op(x, "repeat_interleave"):
        src, reps, dim = x.args[0], arg(x, 1, "repeats"), arg(x, 2, "dim")
        if isinstance(reps, int) and dim in (1, -3) and tensor(src) is not None and tensor(src).dim() == 4:
            return src, [x]
        return x, []
    expand = x.args[0] if is_op(x, "reshape") and x.args else None
    if not is_op(expand, "expand"):
        return x, []
    unsq = expand.args[0]
    if is_op(unsq, "getitem"):
        index = unsq.args[1]
        plain = isinstance(index, tuple) and index[:3] == (slice(None), slice(None), None) and all(
            i == slice(None) for i in index[3:])
        if not plain:
            return x, []
    elif not (is_op(unsq, "unsqueeze") and arg(unsq, 1, "dim") in (2, -3)):
        return x, []
    src, st, et = unsq.args[0], tensor(unsq.args[0]), tensor(expand)
    if st is None or et is None or st.dim() != 4 or et.dim() != 5:
        return x, []
    B, H, S, D = st.shape
    ok = all(_same(a, b) for a, b in zip((et.shape[0], et.shape[1], et.shape[3], et.shape[4]), (B, H, S, D),
                                         strict=True))
    ok = ok and all(_same(a, b) for a, b in zip(xt.shape, (B, H * et.shape[2], S, D), strict=True))
    return (src, [x, expand, unsq]) if ok else (x, [])


def _fold_gqa(k: object, v: object) -> tuple[object, object, list[Node]]:
    """k and v without a head repeat, when both carry the same one; the op's GQA does the rest."""
    k0, k_nodes = _unrepeat(k)
    v0, v_nodes = _unrepeat(v)
    if k_nodes and v_nodes and _same(tensor(k0).shape[1], tensor(v0).shape[1]):
        return k0, v0, k_nodes + v_nodes
    return k, v, []


def _sdpa(node: Node) -> Rewrite | NearMiss | None:
    q, k, v = arg(node, 0, "query"), arg(node, 1, "key"), arg(node, 2, "value")
    mask, dropout_p = arg(node, 3, "attn_mask"), arg(node, 4, "dropout_p", 0.0)
    is_causal, scale = arg(node, 5, "is_causal", False), arg(node, 6, "scale")
    if tensor(q) is None:
        return None
    if isinstance(dropout_p, Node) or dropout_p != 0:
        return NearMiss(KIND, node, f"dropout p={dropout_p} > 0 changes semantics; the op has no dropout")
    if not isinstance(is_causal, bool):
        return NearMiss(KIND, node, "is_causal is computed at run time; the kernel needs it at compile time")
    if scale is not None and not _finite_scalar(scale):
        return NearMiss(KIND, node, "the scale is not a finite constant; the kernel needs it at compile time")
    k, v, repeat = _fold_gqa(k, v)
    why = _checks(node, q, k, v, mask, autocast=True)
    if why:
        return NearMiss(KIND, node, why)
    return _rewrite(node, q, k, v, mask, scale, is_causal, repeat, "scaled_dot_product_attention")


def _finite_scalar(value: object) -> bool:
    """A number the kernel can be specialized on (fx.is_scalar) whose present value is finite."""
    return fx.is_scalar(value) and math.isfinite(fx.scalar_hint(value))


def _hint(value: object) -> float:
    """The present value of an fx.is_scalar number, without guarding it."""
    v = val(value) if isinstance(value, Node) else value
    return v.node.hint if isinstance(v, (torch.SymFloat, torch.SymInt)) else v


def _single_use(nodes: list[Node]) -> str | None:
    """The first node with a use outside the chain: the op would leave that use without a value."""
    for n in nodes:
        if len(n.users) != 1:
            return n.name
    return None


def _weights(w: object) -> tuple[Node | None, list[Node], str | None]:
    """Back from the weights multiplying v through casts and dropout to the softmax.

    Returns (softmax, the nodes after it, why dropout forbids the match)."""
    chain, why = [], None
    while isinstance(w, Node):
        if op_name(w) == "to" and cast_target(w) is not None:
            chain.append(w)
            w = w.args[0]
        elif op_name(w) == "dropout":
            p, training = arg(w, 1, "p", 0.5), arg(w, 2, "training", arg(w, 2, "train", True))
            if isinstance(p, Node) or isinstance(training, Node):
                why = "dropout p or training is computed at run time"
            elif p != 0 and training:
                why = f"dropout p={p} > 0 in training changes semantics; the op has no dropout"
            chain.append(w)
            w = w.args[0]
        elif op_name(w) == "softmax":
            return w, chain, why
        else:
            return None, [], None
    return None, [], None


def _scores(s: object) -> tuple[Node, object, object, object, object, list[Node]] | None:
    """(q @ k^T node, k, scale, softcap (0.0: none), mask, nodes) for the softmax input; None if it
    is not that form."""
    nodes = []
    while isinstance(s, Node) and op_name(s) == "to" and cast_target(s) is not None:
        nodes.append(s)
        s = s.args[0]
    mask = None
    if is_op(s, "add"):
        found = _masked(s)
        if found is None:
            return None
        mask, s, add_nodes = found
        nodes += add_nodes
    s, softcap, cap_nodes = _uncapped(s)
    found = _scaled(s)
    if found is None:
        return None
    mm, k, scale, scale_nodes = found
    return mm, k, scale, softcap, mask, nodes + cap_nodes + scale_nodes + [mm]


_TANH = (torch.tanh, torch.ops.aten.tanh.default)


def _masked(s: Node) -> tuple[object, object, list[Node]] | None:
    """(mask, scores, add nodes) for `scores + mask`, or T5's `(scores + bias) + mask`, whose mask is
    then the pair (bias, mask): the op adds their sum, which is the graph's value wherever a mask
    entry is 0 (and a hidden key either way where it is the dtype's minimum)."""
    a, b = operands(s)
    for x, m in ((a, b), (b, a)):
        if not isinstance(m, Node):
            continue
        if _scaled(_uncapped(x)[0]) is not None:
            return m, x, [s]
        if is_op(x, "add"):
            for y, bias in (operands(x), operands(x)[::-1]):
                if isinstance(bias, Node) and _scaled(_uncapped(y)[0]) is not None:
                    return (bias, m), y, [s, x]
    return None


def _uncapped(s: object) -> tuple[object, object, list[Node]]:
    """(w, cap, nodes) for Gemma 2's softcap `tanh(w / cap) * cap` (either order of the product),
    else (s, 0.0, [])."""
    if is_op(s, "mul"):
        a, b = operands(s)
        for t, c in ((a, b), (b, a)):
            tanh = isinstance(t, Node) and t.op == "call_function" and t.target in _TANH
            d = t.args[0] if tanh else None
            if is_op(d, "div") and (operands(d)[1] is c or _same_scalar(operands(d)[1], c)):
                return operands(d)[0], c, [s, t, d]
    return s, 0.0, []


def _same_scalar(a: object, b: object) -> bool:
    """Two numbers that are the same constant (a symbolic one only as the same node)."""
    return (isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool)
            and not isinstance(b, bool) and a == b)


def _scaled(s: object) -> tuple[Node, object, object, list[Node]] | None:
    """(q @ k^T, k, scale, [the scaling node]) for `mm * c`, `c * mm`, `mm / c` or `mm` itself.

    Falcon's `scores /= math.sqrt(d)` is Dynamo's operator.itruediv: an in-place division of the
    product, the same value as `mm / c` once nothing else reads the product (checked by the caller's
    single-use test, which covers mm)."""
    inplace = isinstance(s, Node) and s.op == "call_function" and s.target is operator.itruediv
    if is_op(s, "mul", "div") or inplace:
        name = "div" if inplace else op_name(s)
        a, b = operands(s)
        if _qk(a) is not None:
            mm, c = a, b
        elif name == "mul" and _qk(b) is not None:
            mm, c = b, a
        else:
            return None
        if name == "div":  # a graph value divisor stays unsupported: no constant scale to take
            c = (1.0 / c if c else math.inf) if isinstance(c, (int, float)) and not isinstance(c, bool) else ("/", c)
        return mm, _qk(mm), c, [s]
    k = _qk(s)
    return (s, k, 1.0, []) if k is not None else None


def _qk(mm: object) -> object:
    """k when `mm` is `matmul(q, k.transpose(-2, -1))` on 4-D tensors, else None."""
    if not is_op(mm, "matmul") or len(mm.args) != 2:
        return None
    kt = mm.args[1]
    if not is_op(kt, "transpose") or tensor(kt) is None or tensor(kt).dim() != 4:
        return None
    dims = {d % 4 for d in (arg(kt, 1, "dim0"), arg(kt, 2, "dim1")) if isinstance(d, int)}
    return kt.args[0] if dims == {2, 3} else None


def _eager(pv: Node) -> Rewrite | NearMiss | None:
    if len(pv.args) != 2:
        return None
    softmax, after, dropout_why = _weights(pv.args[0])
    if softmax is None:
        return None
    scores = _scores(arg(softmax, 0, "input"))
    if scores is None:
        return None
    mm, k, scale, softcap, mask, before = scores
    q, v = mm.args[0], pv.args[1]
    xt = tensor(softmax)
    if xt is None or constant(arg(softmax, 1, "dim")) not in (-1, xt.dim() - 1):
        return NearMiss(KIND, pv, "the softmax is not over the last dimension")
    if dropout_why:
        return NearMiss(KIND, pv, dropout_why)
    weights = [softmax, *after]
    used = _single_use(weights)
    if used:
        return NearMiss(KIND, pv, f"the attention weights ({used}) are also used elsewhere (returned, e.g. "
                                  "output_attentions); the fused op does not produce them")
    used = _single_use(before)
    if used:
        return NearMiss(KIND, pv, f"an intermediate of the scores ({used}) is used elsewhere, which the op cannot "
                                  "serve")
    if not _finite_scalar(scale):
        return NearMiss(KIND, pv, "the scores are scaled by a graph value; the kernel needs a constant scale")
    if softcap and not (_finite_scalar(softcap) and _hint(softcap) > 0):
        return NearMiss(KIND, pv, "the logit softcap is not a positive constant; the kernel needs one at compile time")
    pair = mask if isinstance(mask, tuple) else None
    if pair is not None:  # checked as the sum the op will read
        if any(tensor(t) is None or tensor(t).dtype == torch.bool for t in pair):
            return NearMiss(KIND, pv, "the bias and mask added in turn are not both float tensors")
        mask = tensor(pair[0]) + tensor(pair[1])
    if mask is not None and tensor(mask) is not None and tensor(mask).dtype == torch.bool:
        return NearMiss(KIND, pv, "a bool mask is added to the scores; the op's bool masks select, they do not add")
    k, v, repeat = _fold_gqa(k, v)
    why = _checks(pv, q, k, v, mask)
    if why:
        return NearMiss(KIND, pv, why)
    return _rewrite(pv, q, k, v, pair or mask, scale, False, [*weights, *before, mm.args[1], *repeat],
                    "eager attention" + (" with a logit softcap" if softcap else ""), softcap)
