"""The op families, one record each: the list every per-family table is derived from.

A family is one fused computation end to end: the FX pattern that finds it, the custom op
`torch.ops.mpsk.<name>` that replaces it, the function that works out its kernels' launch for
the eager op and the lowering alike, its ATen reference (the op's default off Metal, and its
decomposition where no kernel runs), its Inductor lowering, the doctor's cases, and the config
policy its plan builder reads. `config.PATTERNS`, the pattern pass's order, the lowerings, the
decompositions and the doctor's checks all iterate FAMILIES, so adding a family is one record
here plus the modules it names (docs/ARCHITECTURE.md, "Adding an op family").

Targets are written "module:attribute" relative to this package and imported on first use: config
imports this module, and the ops, patterns and lowerings import config, so this one imports none
of them.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any


@dataclasses.dataclass(frozen=True)
class OpFamily:
    name: str  # the pattern switch in config.patterns, the op torch.ops.mpsk.<name>, the doctor's label
    kernels: str  # its Metal source, shaders/<kernels>.metal
    policy: str | None  # the config setting holding its launch policy
    pattern: str  # match(node) -> Rewrite | NearMiss | None
    op: str  # the module defining the custom op (importing it registers the op)
    launch: str  # the op's launch inputs -> OpLaunch, for the eager op and the lowering alike
    reference: str  # the ATen math: the op off Metal, and its decomposition for Inductor
    lowering: str  # the Inductor lowering: TensorBox, or None for the op's own call
    doctor_cases: str  # () -> Iterable[Case]
    doctor_reference: str  # the doctor's expected output (may compute in higher precision)

    def resolve(self, field: str) -> Any:
        """The object a "module:attribute" field names."""
        target = getattr(self, field)
        module, _, attribute = target.partition(":")
        return getattr(importlib.import_module(f"{__package__}.{module}"), attribute)

    @property
    def custom_op(self) -> Any:
        """torch.ops.mpsk.<name>.default (registered by importing `op`)."""
        import torch

        importlib.import_module(f"{__package__}.{self.op}")
        return getattr(torch.ops.mpsk, self.name).default


def _family(name: str, module: str, kernels: str, policy: str | None) -> OpFamily:
    """The record of a family laid out the usual way: patterns/<name>.py, ops/<module>.py holding
    `<name>`, `<name>_launch` and `<name>_reference`, lowerings/ops.py `lower_<name>`, and the
    doctor's `<name>_cases` and `<name>_reference` in ops/doctor_cases.py."""
    return OpFamily(
        name=name,
        kernels=kernels,
        policy=policy,
        pattern=f"patterns.{name}:match",
        op=f"ops.{module}",
        launch=f"ops.{module}:{name}_launch",
        reference=f"ops.{module}:{name}_reference",
        lowering=f"lowerings.ops:lower_{name}",
        doctor_cases=f"ops.doctor_cases:{name}_cases",
        doctor_reference=f"ops.doctor_cases:{name}_reference",
    )


# In the order the pattern pass runs them: a pattern that contains another comes first (eager
# attention holds a softmax; a residual add and the norm of its sum hold that norm; a written-out
# LayerNorm holds an RMSNorm of the centered value).
FAMILIES: tuple[OpFamily, ...] = (
    _family("attention", "attention", kernels="attention", policy="attention"),
    _family("rope", "rope", kernels="rope", policy="rope"),
    _family("rope_qk", "rope", kernels="rope", policy="rope"),  # pairs the rope calls above
    _family("add_layer_norm", "norm", kernels="norm", policy="norm"),
    _family("add_rms_norm", "norm", kernels="norm", policy="norm"),
    _family("layer_norm", "norm", kernels="norm", policy="norm"),
    _family("rms_norm", "norm", kernels="norm", policy="norm"),
    _family("softmax", "softmax", kernels="softmax", policy="softmax"),
    _family("quantized_linear", "quantized", kernels="quantized", policy="quantized"),
)

NAMES: tuple[str, ...] = tuple(f.name for f in FAMILIES)


def get(name: str) -> OpFamily:
    """The family called `name`; a clear error for any other name."""
    for family in FAMILIES:
        if family.name == name:
            return family
    raise KeyError(f"no op family {name!r}; families: {list(NAMES)}")
