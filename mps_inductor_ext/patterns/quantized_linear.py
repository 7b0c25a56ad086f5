"""QuantizedLinear's forward: unpack, dequantize, F.linear, as quantization.dequantize writes it.

    q = (w_packed.unsqueeze(-1) >> torch.arange(0, 32, bits)) & (2**bits - 1)   # (N, K*bits/32, 32/bits)
    q = q.reshape(N, K).reshape(N, K / G, G).to(dtype)        # any chain of reshapes
    w = (q * scales.unsqueeze(-1) + biases.unsqueeze(-1)).reshape(N, K)    # either order of each
    out = F.linear(x, w, bias)                                 # bias optional
    out = x @ w.T   (or w.t(), w.mT, w.transpose(0, 1); torch.matmul)       # the same product
    out = F.linear(x, w) + bias,  x @ w.T + bias               # a 1-D bias added after folds in

becomes `mpsk.quantized_linear(x, w_packed, scales, biases, G, bits, bias)`. Anchored at the
linear or matmul, or at the add of a bias that folds in. The values that decide the format (the
shift amounts, the mask, the unsqueezed dimension, the shapes) are checked, not assumed, so a
look-alike computing something else is left alone, and one the kernels do not take (another
width or group size, a dtype mismatch) is a near miss.
"""

from __future__ import annotations

import torch
from torch.fx import Node
from torch.fx.experimental.symbolic_shapes import statically_known_true

from ..quantization import BITS, GROUP_SIZES
from . import NearMiss, Rewrite, supported_dtype
from .fx import arg, cast_target, constant, insert_call, is_op, only_user, operands, other_operand, tensor

KIND = "quantized_linear"


def match(node: Node) -> Rewrite | NearMiss | None:
    if is_op(node, "add"):
        return _with_bias_add(node)
    found = _product(node)
    if found is None:
        return None
    x, w, bias, extra = found
    if bias is None and _bias_add(node) is not None:
        return None  # matched at the add, with the bias
    return _match(node, x, w, bias, extra)


def _match(anchor: Node, x: object, w: object, bias: object, extra: list[Node]) -> Rewrite | NearMiss | None:
    found = _dequantized(w)
    if found is None:
        return None
    return _check(anchor, x, bias, *found[:-1], [*extra, *found[-1]])


def _product(node: Node) -> tuple[object, object, object, list[Node]] | None:
    """(x, w, bias, the transpose node if any) for `F.linear(x, w, bias)` or `x @ w.T` (bias None)."""
    if is_op(node, "linear"):
        return arg(node, 0, "input"), arg(node, 1, "weight"), arg(node, 2, "bias"), []
    if is_op(node, "matmul") and len(node.args) == 2:
        w = _transposed(node.args[1])
        return None if w is None else (node.args[0], w, None, [node.args[1]])
    return None


def _transposed(node: object) -> Node | None:
    """w for a transpose of a 2-D w (w.T, w.mT, w.t(), w.transpose(0, 1) and their aten forms)."""
    if not isinstance(node, Node) or not node.args or tensor(node) is None or tensor(node).dim() != 2:
        return None
    w = node.args[0]
    if node.op == "call_function" and node.target is getattr:
        return w if node.args[1] in ("T", "mT") else None
    if node.op == "call_method" and node.target == "t" and len(node.args) == 1:
        return w
    if node.target in (torch.t, torch.ops.aten.t.default, torch.ops.aten.numpy_T.default, torch.ops.aten.mT.default):
        return w
    if is_op(node, "transpose") and len(node.args) == 3:
        return w if {node.args[1] % 2, node.args[2] % 2} == {0, 1} else None
    return None


def _bias_add(product: Node) -> tuple[Node, Node] | None:
    """(add, bias) when the product's only use is `product + bias`, bias a 1-D tensor."""
    add = only_user(product)
    if not is_op(add, "add") or len(add.args) + len(add.kwargs) != 2:
        return None
    bias = other_operand(add, product)
    t = tensor(bias)
    return (add, bias) if isinstance(bias, Node) and t is not None and t.dim() == 1 else None


def _with_bias_add(add: Node) -> Rewrite | NearMiss | None:
    for product in operands(add):
        found = _product(product) if isinstance(product, Node) else None
        if found is None or found[2] is not None:
            continue
        folded = _bias_add(product)
        if folded is not None and folded[0] is add:
            return _match(add, found[0], found[1], folded[1], [product, *found[3]])
    return None


def _reshapes(node: object) -> tuple[object, list[Node]]:
    """The value under a chain of reshapes (views), and the reshape nodes."""
    chain = []
    while is_op(node, "reshape"):
        chain.append(node)
        node = node.args[0]
    return node, chain


def _unsqueezed(node: object) -> Node | None:
    """t for `t.unsqueeze(-1)` of a 2-D t, else None."""
    if not is_op(node, "unsqueeze"):
        return None
    t = tensor(node.args[0])
    dim = constant(arg(node, 1, "dim"))
    return node.args[0] if t is not None and t.dim() == 2 and dim in (-1, 2) else None


def _pair(node: Node, test) -> tuple[object, object] | None:
    """(a, b) of a binary node's operands with test(a) true, in either order."""
    a, b = operands(node)
    if test(a):
        return a, b
    if test(b):
        return b, a
    return None


def _dequantized(w: object) -> tuple | None:
    """(w_packed, scales, biases, q_dtype, bits, mask, arange, matched nodes) when `w` is the
    dequantized weight, whatever its values; None when it is not that computation's shape."""
    add, w_chain = _reshapes(w)
    if not is_op(add, "add") or len(add.args) + len(add.kwargs) != 2:
        return None
    found = _pair(add, lambda n: is_op(n, "mul"))
    if found is None:
        return None
    mul, biases_u = found
    found = _pair(mul, lambda n: isinstance(n, Node) and cast_target(n) is not None)
    if found is None:
        return None
    cast, scales_u = found
    scales, biases = _unsqueezed(scales_u), _unsqueezed(biases_u)
    masked, q_chain = _reshapes(cast.args[0])
    if scales is None or biases is None or not is_op(masked, "and"):
        return None
    found = _pair(masked, lambda n: is_op(n, "rshift"))
    if found is None:
        return None
    shifted, mask = found
    packed_u, shifts = shifted.args[0], shifted.args[1] if len(shifted.args) > 1 else None
    w_packed = _unsqueezed(packed_u)
    if w_packed is None or not is_op(shifts, "arange"):
        return None
    bits = _step_of_32(shifts)
    matched = [*w_chain, add, mul, biases_u, cast, scales_u, *q_chain, masked, shifted, packed_u, shifts]
    return w_packed, scales, biases, cast_target(cast), bits, constant(mask), add, matched


def _step_of_32(arange: Node) -> int | None:
    """s for `arange(0, 32, s)` (positional or keyword), else None."""
    names = ("start", "end", "step")
    values = [arg(arange, i, name) for i, name in enumerate(names)]
    if len(arange.args) == 1:  # arange(end)
        values = [0, arange.args[0], 1]
    start, end, step = (0 if values[0] is None else values[0]), values[1], (1 if values[2] is None else values[2])
    if start == 0 and end == 32 and isinstance(step, int) and not isinstance(step, bool):
        return step
    return None


def _eq(a: object, b: object) -> bool:
    return statically_known_true(a == b)


def _check(anchor: Node, x: object, bias: object, w_packed: Node, scales: Node, biases: Node, q_dtype: torch.dtype,
           bits: int | None, mask: object, grouped: Node, matched: list[Node]) -> Rewrite | NearMiss | None:
    """The rewrite of `anchor` (the product, or the add of its bias) once the values are checked."""
    xt, pt, st, bt, gt, out = (tensor(v) for v in (x, w_packed, scales, biases, grouped, anchor))
    if any(t is None for t in (xt, pt, st, bt, gt, out)) or (bias is not None and tensor(bias) is None):
        return NearMiss(KIND, anchor, "shapes or dtypes are unknown")
    if pt.dtype != torch.int32:
        return None  # not the packed format
    if bits is None or bits not in BITS:
        return NearMiss(KIND, anchor, f"the weight is unpacked with shifts other than arange(0, 32, b) for "
                                      f"b in {BITS}, the widths the kernels take")
    if not isinstance(mask, int) or mask != 2**bits - 1:
        return NearMiss(KIND, anchor, f"the mask {mask!r} does not take {bits}-bit values")
    n, groups, group = gt.shape
    if not isinstance(group, int) or group not in GROUP_SIZES:
        return NearMiss(KIND, anchor, f"group size {group}: the kernels take {GROUP_SIZES}")
    k = xt.shape[-1]
    shapes_ok = (pt.dim() == 2 and _eq(pt.shape[0], n) and _eq(pt.shape[1] * (32 // bits), groups * group)
                 and all(t.dim() == 2 and _eq(t.shape[0], n) and _eq(t.shape[1], groups) for t in (st, bt))
                 and _eq(k, groups * group) and (bias is None or (tensor(bias).dim() == 1
                                                  and _eq(tensor(bias).shape[0], n))))
    if not shapes_ok:
        return NearMiss(KIND, anchor, "w_packed, scales, biases, x and the bias do not have the format's shapes")
    why = supported_dtype(x, scales, biases, *([] if bias is None else [bias]))
    if why:
        return NearMiss(KIND, anchor, why)
    dtypes = {xt.dtype, st.dtype, bt.dtype, q_dtype, out.dtype, *([] if bias is None else [tensor(bias).dtype])}
    if len(dtypes) != 1:
        return NearMiss(KIND, anchor, f"x is {xt.dtype}, the scales {st.dtype}, the biases {bt.dtype} and q is "
                                      f"cast to {q_dtype}: the op takes one dtype")
    allowed = {*matched, anchor}
    for node in matched:
        if not set(node.users) <= allowed:
            return NearMiss(KIND, anchor, f"an intermediate ({node.name}) is used elsewhere, which the op cannot "
                                          f"serve")
    args = (x, w_packed, scales, biases, group, bits, bias)

    def build(graph):
        return insert_call(graph, anchor, torch.ops.mpsk.quantized_linear.default, args)

    inputs = [x, w_packed, scales, biases, *([] if bias is None else [bias])]
    return Rewrite(KIND, anchor, inputs, build, matched, f"{bits}-bit, group {group}")

