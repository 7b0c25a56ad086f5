"""What a plan builder needs to know of a tensor argument, and what an op's launch binds.

The eager op describes real tensors and a lowering describes Inductor buffers, both as `Operand`s;
each op's `<name>_launch` function turns operands into an `OpLaunch` (the `LaunchPlan` plus which
operand each plan tensor name binds, read as which dtype). So the launch inputs (alignment, mask
kind, default scale, broadcast strides, tensor names) are worked out once, for both; the eager op
then runs the plan (`run_plan`) and the lowering renders it (lowerings.mpsk_kernel).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import torch

from .launch import LaunchPlan, Size, run_plan

VECTOR_WIDTH = 4  # elements per vector load (float4 / half4 / bfloat4)


@dataclasses.dataclass(frozen=True)
class Operand:
    """One tensor argument: sizes and strides in elements (ints, or sympy expressions in a lowering).

    `value` is what gets bound (a tensor, or an Inductor buffer); `aligned` says its first element is
    known to sit on a VECTOR_WIDTH-element boundary of memory; `read_as` reinterprets it for the
    kernel (a bool mask read as bytes).
    """

    value: object
    dtype: torch.dtype
    shape: tuple[Size, ...]
    stride: tuple[Size, ...]
    aligned: bool
    read_as: torch.dtype | None = None

    @classmethod
    def of(cls, t: torch.Tensor, read_as: torch.dtype | None = None) -> Operand:
        """A real tensor: its storage offset decides alignment (allocations are at least 16-byte aligned)."""
        return cls(t, t.dtype, tuple(t.shape), tuple(t.stride()), t.storage_offset() % VECTOR_WIDTH == 0, read_as)

    def bound(self) -> object:
        """The value as the kernel reads it (eager tensors only; a lowering renders `read_as` itself)."""
        if self.read_as is None:
            return self.value
        assert isinstance(self.value, torch.Tensor)
        return self.value.view(self.read_as)


@dataclasses.dataclass(frozen=True)
class OpLaunch:
    """An op call's plan, and the operand bound under each of its tensor names (outputs and scratch
    buffers excluded: the caller allocates the one, the plan the others). `outputs` names the plan
    tensors the op returns, in the op's order ("out" first): an op with two outputs (add_rms_norm's
    (y, h)) is one launch writing both."""

    plan: LaunchPlan
    operands: Mapping[str, Operand]
    outputs: tuple[str, ...] = ("out",)


def broadcast_strides(op: Operand, target: Sequence[Size]) -> tuple[Size, ...]:
    """Strides reading `op` broadcast to `target` in place, as `expand` gives: 0 along leading and
    size-1 dimensions (a lowering's sizes are simplified, so a size known to be 1 is 1)."""
    lead = len(target) - len(op.shape)
    return tuple(0 if i < lead or op.shape[i - lead] == 1 else op.stride[i - lead] for i in range(len(target)))


def rows_vector_ok(op: Operand) -> bool:
    """Whether 4-wide loads suit the rows of a (..., cols) operand with unit column stride: a known
    row length that is a multiple of 4, row strides that are, and an aligned start."""
    cols = op.shape[-1]
    if not (isinstance(cols, int) and cols % VECTOR_WIDTH == 0 and op.aligned):
        return False
    if op.stride[-1] != 1 and cols != 1:
        return False
    return all(n == 1 or (isinstance(s, int) and s % VECTOR_WIDTH == 0)
               for n, s in zip(op.shape[:-1], op.stride[:-1], strict=True))


def run_launch(launch: OpLaunch, out: torch.Tensor | Sequence[torch.Tensor], runtime: str) -> None:
    """The eager op's rendering of its launch: the output(s) (one tensor per name in
    `launch.outputs`, in that order) and the operands bound by name, then run."""
    outs = (out,) if isinstance(out, torch.Tensor) else tuple(out)
    if len(outs) != len(launch.outputs):
        raise ValueError(f"the launch writes {len(launch.outputs)} outputs {launch.outputs}, got {len(outs)} tensors")
    bound = {name: op.bound() for name, op in launch.operands.items()}
    run_plan(launch.plan, {**dict(zip(launch.outputs, outs, strict=True)), **bound}, runtime)
