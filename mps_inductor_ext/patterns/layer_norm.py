"""LayerNorm: F.layer_norm / nn.LayerNorm over the last dimension."""

from __future__ import annotations

import torch
from torch.fx import Node

from . import NearMiss, Norm, Rewrite, supported_dtype
from .fx import arg, constant, is_scalar, op_name, scalar, scalar_nodes, tensor

KIND = "layer_norm"


def match(node: Node) -> Rewrite | NearMiss | None:
    found = find(node)
    return found.rewrite() if isinstance(found, Norm) else found


def find(node: Node) -> Norm | NearMiss | None:
    """The LayerNorm at `node`, before it is turned into a rewrite (add_layer_norm extends it)."""
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
    why = supported_dtype(x, weight, bias)
    for name, t in (("weight", weight), ("bias", bias)):
        tt = tensor(t)
        if why is None and t is not None and (tt is None or tt.dtype != xt.dtype):
            why = f"the {name} is {getattr(tt, 'dtype', 'unknown')} but the input is {xt.dtype}"
    if why:
        return NearMiss(KIND, node, why)
    return Norm(KIND, torch.ops.mpsk.layer_norm.default, node, x, (weight, bias, scalar(eps)),
                [t for t in (weight, bias) if t is not None], scalar_nodes(eps))
