"""FX helpers for matching Dynamo's torch-level graphs and torch.export's aten graphs.

Dynamo records what the user wrote: `x.pow(2)` is a method call, `x ** 2` an
operator, `torch.pow(x, 2)` a function. torch.export's training IR (what the
pre-grad hook sees on the AOTInductor path) spells the same as aten overloads:
`aten.pow.Tensor_Scalar`, `aten.to.dtype`, `aten.slice.Tensor`. `op_name` folds
all of those into one name, so a pattern is written once per operation, not
once per spelling; aten overloads take their arguments in the positions of the
torch functions they come from, so `arg` reads both alike.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch.fx import Graph, Node

_FUNCTIONS: dict[Any, str] = {
    operator.mul: "mul", torch.mul: "mul", operator.truediv: "div", torch.div: "div",
    operator.add: "add", torch.add: "add", operator.sub: "sub", torch.sub: "sub",
    operator.neg: "neg", torch.neg: "neg", operator.pow: "pow", torch.pow: "pow",
    torch.mean: "mean", torch.rsqrt: "rsqrt", torch.sqrt: "sqrt", torch.cat: "cat", torch.concat: "cat",
    torch.matmul: "matmul", operator.matmul: "matmul", torch.bmm: "matmul",
    torch.transpose: "transpose", torch.softmax: "softmax", F.softmax: "softmax",
    torch.log_softmax: "log_softmax", F.log_softmax: "log_softmax",
    F.dropout: "dropout", torch.dropout: "dropout", operator.getitem: "getitem",
    torch.reshape: "reshape", torch.unsqueeze: "unsqueeze", torch.stack: "stack", torch.flatten: "flatten",
    F.scaled_dot_product_attention: "sdpa", F.rms_norm: "rms_norm", torch.rms_norm: "rms_norm",
    F.layer_norm: "layer_norm", torch.layer_norm: "layer_norm",
    torch.repeat_interleave: "repeat_interleave", torch.where: "where",
    torch.special.softmax: "softmax", torch.special.log_softmax: "log_softmax", torch.chunk: "chunk",
    torch.arange: "arange", torch.zeros: "zeros", operator.and_: "and", torch.logical_and: "and",
    torch.bitwise_and: "and", operator.le: "le", torch.le: "le", operator.ge: "ge", torch.ge: "ge",
    operator.lt: "lt", torch.lt: "lt", operator.gt: "gt", torch.gt: "gt",
    F.linear: "linear", operator.rshift: "rshift", torch.bitwise_right_shift: "rshift",
}
_aten = torch.ops.aten
# aten overload packets (any overload) of torch.export's training IR -> operation.
_ATEN: dict[Any, str] = {
    _aten.mul: "mul", _aten.div: "div", _aten.add: "add", _aten.sub: "sub", _aten.neg: "neg",
    _aten.pow: "pow", _aten.mean: "mean", _aten.rsqrt: "rsqrt", _aten.sqrt: "sqrt", _aten.cat: "cat",
    _aten.concat: "cat", _aten.matmul: "matmul", _aten.transpose: "transpose", _aten.softmax: "softmax",
    _aten.log_softmax: "log_softmax", _aten.dropout: "dropout", _aten.reshape: "reshape", _aten.view: "reshape",
    _aten.unsqueeze: "unsqueeze", _aten.expand: "expand", _aten.stack: "stack", _aten.flatten: "flatten",
    _aten.scaled_dot_product_attention: "sdpa", _aten.rms_norm: "rms_norm", _aten.layer_norm: "layer_norm",
    _aten.repeat_interleave: "repeat_interleave", _aten.where: "where", _aten.chunk: "chunk",
    _aten.arange: "arange", _aten.zeros: "zeros", _aten.logical_and: "and", _aten.bitwise_and: "and",
    _aten.__and__: "and", _aten.le: "le", _aten.ge: "ge", _aten.lt: "lt", _aten.gt: "gt",
    _aten.new_ones: "new_ones", _aten.to: "to", _aten._to_copy: "to", _aten.type_as: "to",
    _aten.contiguous: "contiguous", _aten.slice: "slice", _aten.linear: "linear", _aten.__rshift__: "rshift",
    _aten.bitwise_right_shift: "rshift",
}
# Nodes that only check metadata; torch.export leaves one after each dtype cast.
METADATA_CHECKS = (_aten._assert_tensor_metadata.default,)
_METHODS: dict[str, str] = {
    "mul": "mul", "__mul__": "mul", "div": "div", "__truediv__": "div", "add": "add", "__add__": "add",
    "sub": "sub", "neg": "neg", "pow": "pow", "__pow__": "pow", "mean": "mean", "rsqrt": "rsqrt", "sqrt": "sqrt",
    "matmul": "matmul", "transpose": "transpose", "softmax": "softmax", "log_softmax": "log_softmax",
    "reshape": "reshape", "view": "reshape", "unsqueeze": "unsqueeze", "expand": "expand", "flatten": "flatten",
    "to": "to", "float": "to", "half": "to", "bfloat16": "to", "type_as": "to", "type": "to",
    "contiguous": "contiguous", "repeat_interleave": "repeat_interleave",
    "chunk": "chunk",
    "__and__": "and", "logical_and": "and", "bitwise_and": "and", "le": "le", "__le__": "le", "ge": "ge",
    "__ge__": "ge", "lt": "lt", "__lt__": "lt", "gt": "gt", "__gt__": "gt", "new_ones": "new_ones",
    "__rshift__": "rshift", "bitwise_right_shift": "rshift",
}


def op_name(node: object) -> str | None:
    """The operation a node performs, whatever spelling the user chose; None for others."""
    if not isinstance(node, Node):
        return None
    if node.op == "call_function":
        if isinstance(node.target, torch._ops.OpOverload):
            return None if node.target is _aten.view.dtype else _ATEN.get(node.target.overloadpacket)
        try:
            return _FUNCTIONS.get(node.target)
        except TypeError:  # unhashable target
            return None
    if node.op == "call_method":
        return _METHODS.get(node.target)
    return None


def is_op(node: object, *names: str) -> bool:
    return op_name(node) in names


def val(node: object) -> Any:
    """The example value Dynamo recorded for a node (a fake tensor), or the constant itself."""
    if isinstance(node, Node):
        return node.meta.get("example_value", node.meta.get("val"))
    return node


def tensor(node: object) -> torch.Tensor | None:
    v = val(node)
    return v if isinstance(v, torch.Tensor) else None


def arg(node: Node, index: int, name: str, default: Any = None) -> Any:
    """Argument `index` (positional) or `name` (keyword) of a call, else `default`.

    For method calls argument 0 is the tensor itself.
    """
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def constant(value: object) -> Any:
    """A Python constant passed to a call, or None when it is a graph value."""
    if isinstance(value, Node):
        return None
    return value


def is_scalar(value: object) -> bool:
    """Whether `value` is a number a kernel can be specialized on: a Python int or float, or a graph
    scalar with a known value. `dynamic=True` makes Dynamo lift float module attributes (an RMSNorm's
    `variance_epsilon`, the attention `scaling`) to graph inputs read with `.item()`: symbolic, but
    with the value they hold now."""
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return True
    v = val(value) if isinstance(value, Node) else None
    return isinstance(v, (torch.SymFloat, torch.SymInt)) and v.node.has_hint()


def scalar(value: object) -> float:
    """The value of an `is_scalar` number. A symbolic one is guarded to it: the compiled code is
    specialized on it, and Dynamo recompiles should it ever change (these attributes do not). Call
    it when building the replacement, so a declined match adds no guard."""
    v = val(value) if isinstance(value, Node) else value
    return float(v)


def scalar_hint(value: object) -> float:
    """The present value of an `is_scalar` number without guarding it: for checks that may still
    decline the match (a declined match must add no guard)."""
    v = val(value) if isinstance(value, Node) else value
    return float(v.node.hint) if isinstance(v, (torch.SymFloat, torch.SymInt)) else float(v)


def scalar_nodes(value: object) -> list[Node]:
    """The graph node a symbolic scalar comes from (its `.item()`), to die with the match."""
    return [value] if isinstance(value, Node) else []


def last_dim(dim: object, ndim: int) -> bool:
    """Whether `dim` names the last dimension of an `ndim`-dimensional tensor."""
    if isinstance(dim, (list, tuple)):
        if len(dim) != 1:
            return False
        dim = dim[0]
    return isinstance(dim, int) and not isinstance(dim, bool) and dim in (-1, ndim - 1)


def cast_target(node: Node) -> torch.dtype | None:
    """The dtype a `to`/`float`/`half`/`type_as` call (or its aten overload) converts to, if it is
    only a dtype cast."""
    if op_name(node) != "to":
        return None
    if node.op == "call_function":  # aten.to.dtype / _to_copy / type_as: the recorded values tell
        out, inp = tensor(node), tensor(node.args[0]) if node.args else None
        if out is not None and inp is not None and out.device == inp.device and out.shape == inp.shape:
            return out.dtype
        return None
    name = node.target
    fixed = {"float": torch.float32, "half": torch.float16, "bfloat16": torch.bfloat16}
    if name in fixed:
        return fixed[name] if len(node.args) == 1 and not node.kwargs else None
    out = tensor(node)
    if name in ("to", "type_as", "type") and out is not None:
        inp = tensor(node.args[0])
        if inp is not None and inp.device == out.device:
            return out.dtype
    return None


def strip_casts(node: object) -> object:
    """Follows dtype casts back to the value they convert."""
    while isinstance(node, Node) and op_name(node) == "to" and cast_target(node) is not None:
        node = node.args[0]
    return node


def cast_chain(node: object) -> tuple[object, list[Node]]:
    """The value under a chain of dtype casts, and the casts."""
    casts = []
    while isinstance(node, Node) and op_name(node) == "to" and cast_target(node) is not None:
        casts.append(node)
        node = node.args[0]
    return node, casts


def follow_casts(node: Node, matched: list[Node]) -> Node:
    """Steps through dtype casts that are the only use of `node`; returns the last one
    (the earlier nodes join `matched`)."""
    while True:
        user = only_user(node)
        if user is None or op_name(user) != "to" or cast_target(user) is None:
            return node
        matched.append(node)
        node = user


def only_user(node: Node) -> Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def operands(node: Node) -> tuple[object, object]:
    """The two operands of a binary add/mul/sub/div call."""
    a = node.args[0] if node.args else node.kwargs.get("input")
    b = node.args[1] if len(node.args) > 1 else node.kwargs.get("other")
    return a, b


def other_operand(node: Node, one: object) -> object:
    a, b = operands(node)
    return b if a is one else a if b is one else None


def insert_call(graph: Graph, anchor: Node, fn: Callable, args: Sequence[object]) -> Node:
    """Inserts `fn(*args)`, which computes `anchor`'s value, just before `anchor`.

    The new node takes the anchor's recorded example value and source location:
    the replacement has the same shape, dtype and device by construction.
    """
    with graph.inserting_before(anchor):
        new = graph.call_function(fn, tuple(args))
    for key in ("example_value", "val", "stack_trace", "nn_module_stack", "source_fn_stack"):
        if key in anchor.meta:
            new.meta[key] = anchor.meta[key]
    return new


def insert_cast(graph: Graph, anchor: Node, x: Node, dtype: torch.dtype) -> Node:
    """`x.to(dtype)` before `anchor`, spelled as the graph spells casts (a method call in Dynamo's
    graph, aten.to.dtype in an aten graph)."""
    aten = isinstance(anchor.target, torch._ops.OpOverload)
    with graph.inserting_before(anchor):
        new = graph.call_function(_aten.to.dtype, (x, dtype)) if aten else graph.call_method("to", (x, dtype))
    new.meta["val" if aten else "example_value"] = tensor(x).to(dtype)
    return new


def last_dim_slice(node: object) -> tuple[Node, object, object, object] | None:
    """(x, start, stop, step) when `node` slices only x's last dimension: `x[..., a:b:c]`,
    `x[:, :, :, a:b:c]`, or aten.slice.Tensor on the last dim. start is 0 and step 1 when omitted;
    stop is None when the slice runs to the end. Values may be graph nodes' recorded SymInts."""
    if not isinstance(node, Node) or tensor(node.args[0] if node.args else None) is None:
        return None
    x = node.args[0]
    rank = tensor(x).dim()
    if op_name(node) == "slice":
        dim, start, stop, step = (arg(node, i, name, d) for i, name, d in
                                  ((1, "dim", 0), (2, "start", None), (3, "end", None), (4, "step", 1)))
        if not isinstance(dim, int) or dim % max(rank, 1) != rank - 1:
            return None
        start, stop, step = (val(v) for v in (start, stop, step))
        if stop is not None and isinstance(stop, int) and stop >= 2**62:  # aten's "to the end"
            stop = None
        return x, 0 if start is None else start, stop, 1 if step is None else step
    if not is_op(node, "getitem"):
        return None
    index = node.args[1]
    index = index if isinstance(index, tuple) else (index,)
    if len(index) == 2 and index[0] is Ellipsis:
        index = index[1:]
    elif len(index) != rank or any(i != slice(None) for i in index[:-1]):
        return None
    last = index[-1]
    if not isinstance(last, slice):
        return None
    start, stop, step = (val(v) for v in (last.start, last.stop, last.step))
    return x, 0 if start is None else start, stop, 1 if step is None else step


def drop_metadata_checks(graph: Graph) -> None:
    """Removes torch.export's `_assert_tensor_metadata` nodes: they use a value without needing it,
    and would otherwise count as a second use of every intermediate a pattern replaces."""
    for node in list(graph.nodes):
        if node.op == "call_function" and node.target in METADATA_CHECKS:
            graph.erase_node(node)


def erase_dead(graph: Graph, nodes: Sequence[Node]) -> None:
    """Removes the matched nodes nothing uses any more (users first).

    A node counts as pure here even when its op may draw random numbers (SDPA is tagged so for its
    dropout): the patterns match only calls that draw none, and a dead call left in the graph is
    not removed later either (an `mps` graph turns it into an extern call that runs every time).
    """
    pending = list(dict.fromkeys(nodes))
    changed = True
    while changed:
        changed = False
        for n in reversed(pending):
            if not n.users and n.op in ("call_function", "call_method") and not n.is_impure(impure_random=False):
                graph.erase_node(n)
                pending.remove(n)
                changed = True


def erased(node: Node) -> bool:
    return getattr(node, "_erased", False)
