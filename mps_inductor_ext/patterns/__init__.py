"""Pattern families that replace subgraphs with mpsk ops.

Each family module exposes `match(node) -> Rewrite | NearMiss | None`, anchored
at one node of the graph: of Dynamo's torch-level graph (torch.compile), or of
torch.export's training-IR aten graph (aoti_compile_and_package); fx.py folds
both spellings. `apply` walks the graph once per family, in the order of
`families.FAMILIES`, where a larger pattern (eager attention, which contains a
softmax) runs before the patterns it contains. Both graphs are the same on a Mac and elsewhere: the
per-device decompositions that split SDPA or softmax into different aten graphs
come later, in AOTAutograd.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable, Sequence

import torch
from torch.fx import Graph, Node

from .. import config, diagnostics
from ..families import FAMILIES
from ..ops.common import metal_runtime
from .fx import drop_metadata_checks, erase_dead, erased, insert_call, tensor


@dataclasses.dataclass
class Rewrite:
    """A match: `build(graph)` inserts the replacement before `anchor`, whose uses it takes over."""

    kind: str
    anchor: Node
    inputs: Sequence[object]  # the tensors the op reads: they decide the device
    build: Callable[[Graph], Node]
    matched: Sequence[Node]  # nodes that die once the anchor is replaced
    detail: str | None = None


@dataclasses.dataclass
class NearMiss:
    """Something that looks like the pattern but must not be replaced, and why."""

    kind: str
    anchor: Node
    reason: str


@dataclasses.dataclass
class Norm:
    """A matched norm before it becomes a Rewrite: `op(x, *args)` computes `anchor`. The fused
    residual forms (patterns/residual_norm.py) take it over when `x` is a residual add."""

    kind: str
    op: torch._ops.OpOverload
    anchor: Node
    x: object
    args: tuple  # after x: the op's other arguments
    affine: list  # the tensors among args (they decide the device with x)
    matched: list[Node]

    def rewrite(self) -> Rewrite:
        def build(graph):
            return insert_call(graph, self.anchor, self.op, (self.x, *self.args))

        return Rewrite(self.kind, self.anchor, [self.x, *self.affine], build, self.matched)


def metal_device(inputs: Sequence[object]) -> bool:
    """Whether the op's inputs all live where one Metal runtime serves them (ops.common.metal_runtime;
    their dtypes are the matchers' to refuse, with a near miss that says so)."""
    runtimes = {metal_runtime(t.device) for t in (tensor(i) for i in inputs) if t is not None}
    return len(runtimes) == 1 and None not in runtimes


def apply(graph: Graph) -> collections.Counter:
    """Replaces every match in `graph`; returns how many of each kind it leaves in the graph (a
    rewrite that fuses earlier replacements, such as rope_qk of two ropes, takes them off their
    kind's count)."""
    done: collections.Counter = collections.Counter()
    drop_metadata_checks(graph)
    kinds = {family.custom_op: family.name for family in FAMILIES}
    for family in FAMILIES:
        kind, match = family.name, family.resolve("pattern")
        for node in list(graph.nodes):
            if erased(node):  # by an earlier rewrite
                continue
            found = match(node)
            if found is None:
                continue
            if not config.patterns[kind]:
                diagnostics.record_near_miss(kind, f"the {kind} pattern is switched off in config.patterns", node.meta)
                continue
            if isinstance(found, NearMiss):
                diagnostics.record_near_miss(found.kind, found.reason, found.anchor.meta)
                continue
            if not metal_device(found.inputs):
                continue
            for absorbed in (n for n in (found.anchor, *found.matched) if n.target in kinds):
                done[kinds[absorbed.target]] -= 1
                if not done[kinds[absorbed.target]]:
                    del done[kinds[absorbed.target]]
            new = found.build(graph)
            found.anchor.replace_all_uses_with(new)
            erase_dead(graph, [found.anchor, *found.matched])
            done[kind] += 1
            diagnostics.record_replacement(kind, found.anchor.meta, detail=found.detail)
    return done


def supported_dtype(*values: object) -> str | None:
    """Why these tensors cannot take a Metal kernel, by dtype, or None if they can."""
    for v in values:
        t = tensor(v)
        if t is not None and t.dtype not in (torch.float32, torch.float16, torch.bfloat16):
            return f"{t.dtype} has no Metal kernel (float32, float16 and bfloat16 do)"
    return None
