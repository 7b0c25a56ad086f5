"""softmax and log_softmax over the last dimension, in every spelling.

    torch.softmax(x, -1) / F.softmax(x, dim=-1, _stacklevel=5) / x.softmax(-1) / nn.Softmax(-1)
    F.softmax(x, dim=-1, dtype=torch.float32).to(x.dtype)      # HF eager attention's upcast
    F.softmax(x.float(), dim=-1).type_as(x)                     # the same, written as casts

Both upcast forms fold into one `mpsk.softmax(x)`: the op accumulates in fp32 and
rounds once to x's dtype, which is exactly what the upcast, fp32 softmax and cast
back compute. A lone `dtype=torch.float32` upcast whose fp32 result is kept becomes
`mpsk.softmax(x.to(torch.float32))`, the same as the user-written
`softmax(x.float())`: identical numerics, and every last-dim softmax is replaced
alike, at the price of a separate cast kernel that Inductor would have fused into
its own softmax. Other dims are left to Inductor (the op supports them, but the
backend does not take them: see the backend issue), as are float64, an implicit
`dim`, and a `dtype` other than an fp32 upcast.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.fx import Node

from . import NearMiss, Rewrite, supported_dtype
from .fx import arg, cast_target, constant, insert_call, insert_cast, last_dim, only_user, op_name, tensor

KIND = "softmax"
HALF = (torch.float16, torch.bfloat16)


def match(node: Node) -> Rewrite | NearMiss | None:
    name = op_name(node)
    if name not in ("softmax", "log_softmax"):
        return None
    x = arg(node, 0, "input")
    xt = tensor(x)
    if xt is None or tensor(node) is None:
        return None
    dim = arg(node, 1, "dim")
    # F.softmax(input, dim, _stacklevel, dtype); torch.softmax / Tensor.softmax(input, dim, dtype)
    dtype = constant(arg(node, 3 if node.target in (F.softmax, F.log_softmax) else 2, "dtype"))
    why = supported_dtype(x, node)
    if why:
        return NearMiss(KIND, node, why)
    if dim is None:
        return NearMiss(KIND, node, f"{name} without dim (PyTorch's implicit, deprecated choice): left to Inductor")
    if isinstance(dim, Node):
        return NearMiss(KIND, node, f"{name}'s dim is computed at run time: left to Inductor")
    if not last_dim(dim, xt.dim()):
        return NearMiss(KIND, node, f"{name} over dim {dim}, not the last: left to Inductor")
    log = name == "log_softmax"
    if dtype is None or dtype == xt.dtype:
        return _casts_around(node, x, dim, log) or _rewrite(node, x, dim, log, [])
    if dtype != torch.float32 or xt.dtype not in HALF:
        return NearMiss(KIND, node, f"{name} computes in {dtype} from a {xt.dtype} input: left to Inductor")
    back = _cast_back(node, xt.dtype)
    if back is not None:
        return _rewrite(back, x, dim, log, [node], "the float32 upcast and the cast back folded")
    return _rewrite(node, x, dim, log, [], "upcast to float32 before the kernel", upcast=True)


def _cast_back(node: Node, dtype: torch.dtype) -> Node | None:
    """The cast of `node` back to `dtype`, when that is its only use."""
    user = only_user(node)
    if user is not None and op_name(user) == "to" and cast_target(user) == dtype:
        return user
    return None


def _casts_around(node: Node, x: object, dim: int, log: bool) -> Rewrite | None:
    """`softmax(x16.float()).to(x16.dtype)`: the explicit casts fold like `dtype=torch.float32`."""
    if not (isinstance(x, Node) and op_name(x) == "to" and cast_target(x) == torch.float32):
        return None
    x16 = x.args[0]
    t = tensor(x16)
    if t is None or t.dtype not in HALF or only_user(x) is not node:
        return None
    back = _cast_back(node, t.dtype)
    if back is None:
        return None
    return _rewrite(back, x16, dim, log, [node, x], "the float32 casts around it folded")


def _rewrite(anchor: Node, x: object, dim: int, log: bool, matched: list[Node], detail: str | None = None,
             *, upcast: bool = False) -> Rewrite:
    dim = dim[0] if isinstance(dim, (list, tuple)) else dim

    def build(graph):
        src = insert_cast(graph, anchor, x, torch.float32) if upcast else x
        return insert_call(graph, anchor, torch.ops.mpsk.softmax.default, (src, dim, log))

    return Rewrite(KIND, anchor, [x], build, matched, detail)
