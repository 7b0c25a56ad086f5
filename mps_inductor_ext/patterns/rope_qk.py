"""rope_qk: two mpsk.rope calls with the same cos, sin and layout (q and k, as every HF attention
writes `apply_rotary_pos_emb(q, k, cos, sin)`) become one mpsk.rope_qk, one kernel launch that
reads the tables once per position for all heads.

Runs after the rope family, on the mpsk.rope nodes it left: anchored at the earlier of the two
calls; the fused op goes there when the later call's input already exists, else at the later call
when nothing reads the earlier result in between (ModernBERT's `k.float()` comes after q's rope). The pair
must agree in batch, sequence and head dim, dtype and rotation style; the tables must be the same
for every head (they broadcast to (B, 1, S, R)), which a per-head table is not.
"""

from __future__ import annotations

import operator

import torch
from torch.fx import Graph, Node
from torch.fx.experimental.symbolic_shapes import statically_known_true

from . import NearMiss, Rewrite
from .fx import cast_target, tensor

KIND = "rope_qk"


def _rope_args(node: object) -> tuple | None:
    """(x, cos, sin, interleaved) of an mpsk.rope call node, else None."""
    if not (isinstance(node, Node) and node.op == "call_function" and node.target is torch.ops.mpsk.rope.default):
        return None
    x, cos, sin, *rest = node.args
    interleaved = rest[0] if rest else node.kwargs.get("interleaved", False)
    return x, cos, sin, interleaved


def _same_tables(node: Node, cos: Node, sin: object, interleaved: object) -> bool:
    found = _rope_args(node)
    return (found is not None and _same_value(found[1], cos) and _same_value(found[2], sin)
            and found[3] == interleaved)


def _same_value(a: object, b: object) -> bool:
    """One node, or two casts of one node to one dtype (the rope pattern casts each call's tables)."""
    if a is b:
        return True
    return (isinstance(a, Node) and isinstance(b, Node) and cast_target(a) is not None
            and cast_target(a) == cast_target(b) and a.args[0] is b.args[0])


def _same(a: object, b: object) -> bool:
    return a is b or (a is not None and b is not None and statically_known_true(a == b))


def match(node: Node) -> Rewrite | NearMiss | None:
    found = _rope_args(node)
    if found is None:
        return None
    q, cos, sin, interleaved = found
    if not isinstance(cos, Node):
        return None
    order = {n: i for i, n in enumerate(node.graph.nodes)}
    # The next rope of the same tables (a model shares them between layers: the partner is the
    # nearest later call, the k of the same attention).
    partner = next((n for n in node.graph.nodes if order[n] > order[node] and _same_tables(n, cos, sin, interleaved)),
                   None)
    if partner is None:
        return None
    k = _rope_args(partner)[0]
    why = _why_not(q, k, cos, sin)
    if why:
        return NearMiss(KIND, node, why)
    # The fused call goes where both inputs exist and before every use of either output: at the
    # earlier call if k exists there, else at the later one if nothing reads q's result in between.
    if isinstance(k, Node) and order[k] < order[node]:
        place = node
    elif all(order[u] > order[partner] for u in node.users):
        place = partner
    else:
        return NearMiss(KIND, node, f"{k} is computed after {node.name}'s result is used, so no one place "
                                    "serves both calls")
    tables = [t for t in _rope_args(partner)[1:3] if t is not cos and t is not sin]  # its own casts
    return Rewrite(KIND, node, [q, k, cos, sin], _builder(place, node, partner, (q, k, cos, sin, interleaved)),
                   [partner, *tables], "interleaved" if interleaved else "rotate_half")


def _why_not(q: object, k: object, cos: Node, sin: object) -> str | None:
    qt, kt, ct, st = (tensor(t) for t in (q, k, cos, sin))
    if qt is None or kt is None or ct is None or st is None:
        return "shapes or dtypes are unknown"
    if qt.dtype != kt.dtype:
        return f"q is {qt.dtype} and k is {kt.dtype}"
    if not all(_same(qt.shape[i], kt.shape[i]) for i in (0, 2, 3)):
        return f"q {tuple(qt.shape)} and k {tuple(kt.shape)} differ in batch, sequence or head dim"
    for name, t in (("cos", ct), ("sin", st)):
        if t.dim() >= 3 and not _same(t.shape[-3], 1):
            return f"{name} {tuple(t.shape)} differs between heads; one table per position is what rope_qk reads"
    return None


def _builder(place: Node, q_rope: Node, k_rope: Node, args: tuple):
    def build(graph: Graph) -> Node:
        with graph.inserting_before(place):
            fused = graph.call_function(torch.ops.mpsk.rope_qk.default, args)
            q_out = graph.call_function(operator.getitem, (fused, 0))
            k_out = graph.call_function(operator.getitem, (fused, 1))
        for key in ("example_value", "val"):
            if key in q_rope.meta and key in k_rope.meta:
                fused.meta[key] = (q_rope.meta[key], k_rope.meta[key])
                q_out.meta[key], k_out.meta[key] = q_rope.meta[key], k_rope.meta[key]
        for key in ("stack_trace", "nn_module_stack", "source_fn_stack"):
            if key in q_rope.meta:
                fused.meta[key] = q_out.meta[key] = q_rope.meta[key]
        if "stack_trace" in k_rope.meta:
            k_out.meta["stack_trace"] = k_rope.meta["stack_trace"]
        k_rope.replace_all_uses_with(k_out)
        return q_out

    return build
