"""Runs one mpsk op call on the emulator and records what each of its kernel launches did:
threads per group, groups, threadgroup memory, and (from the instrumented emulator) the bytes it
loaded and stored, beside the ideal of the call (ideal.py)."""

from __future__ import annotations

import dataclasses
import math
import time

import torch

from .. import config, families, tuning
from ..ops.launch import observe_launches
from . import counters
from .chips import Chip
from .ideal import Ideal, ideal
from .roofline import Modeled, roofline


@dataclasses.dataclass(frozen=True)
class LaunchProfile:
    kernel: str
    threads: tuple[int, ...]
    group_size: tuple[int, ...]
    static_threadgroup_bytes: int  # the kernel's threadgroup arrays, per group
    counts: counters.MemoryCounts | None  # None: the emulator in use does not count

    @property
    def threads_per_group(self) -> int:
        return math.prod(self.group_size)

    @property
    def groups(self) -> int:
        return math.prod(-(-t // g) for t, g in zip(self.threads, self.group_size, strict=True))


@dataclasses.dataclass(frozen=True)
class OpProfile:
    """One op call: its launches, its ideal, and how its counts were obtained."""

    op: str
    label: str
    dtype: torch.dtype
    launches: tuple[LaunchProfile, ...]
    ideal: Ideal
    emulator_seconds: float  # CPU emulator wall time (compiles included): not a GPU time
    extrapolated_from: str = ""  # the shape counted, when the counts were scaled to this one
    note: str = ""

    @property
    def counts(self) -> counters.MemoryCounts | None:
        """All launches' counters summed; None unless every launch was counted."""
        if not self.launches or any(launch.counts is None for launch in self.launches):
            return None
        total = counters.MemoryCounts()
        for launch in self.launches:
            total = total + launch.counts
        return total

    @property
    def traffic_ratio(self) -> float | None:
        """Counted device bytes over the ideal bytes (1.0 = every input and output byte moved once)."""
        c = self.counts
        return None if c is None or not self.ideal.bytes else c.device_bytes / self.ideal.bytes

    def modeled(self, chip: Chip, counted: bool = True) -> Modeled | None:
        """MODELED roofline time on `chip` of the counted bytes (counted=True; None if not counted)
        or of the ideal bytes."""
        bits = torch.finfo(self.dtype).bits
        if counted:
            c = self.counts
            return None if c is None else roofline(chip, c.device_bytes, self.ideal.flops, bits)
        return roofline(chip, self.ideal.bytes, self.ideal.flops, bits)

    def extrapolated(self, factor: float, full: Ideal, label: str, reason: str) -> OpProfile:
        """These counts scaled by `factor` to a larger shape whose ideal is `full`: valid only where
        the kernel's traffic is provably linear in the scaled size, which `reason` must state."""
        if not (isinstance(factor, (int, float)) and factor >= 1):
            raise ValueError(f"factor must be a number >= 1, got {factor!r}")
        if not reason:
            raise ValueError("an extrapolation must say why the access pattern is linear in the scaled size")
        launches = tuple(dataclasses.replace(
            launch, counts=None if launch.counts is None else launch.counts.scaled(factor))
            for launch in self.launches)  # their grids stay those of the shape counted
        return dataclasses.replace(self, label=label, launches=launches, ideal=full,
                                   extrapolated_from=self.label, note=reason)


def family_name(op: object) -> str:
    """The family an op names: "rms_norm", "mpsk::rms_norm", torch.ops.mpsk.rms_norm(.default)."""
    if isinstance(op, str):
        name = op.removeprefix("mpsk::").removeprefix("mpsk.")
    elif isinstance(op, torch._ops.OpOverload):
        name = op.name().partition("::")[2]
    elif isinstance(op, torch._ops.OpOverloadPacket):
        name = op._qualified_op_name.partition("::")[2]
    else:
        raise TypeError(f"op must be a family name or a torch.ops.mpsk op, got {type(op).__name__}")
    families.get(name)  # a clear error for an unknown family
    return name


def profile(op: object, *args: object, label: str | None = None, **kwargs: object) -> OpProfile:
    """Runs `op(*args, **kwargs)` (CPU tensors) on the emulated Metal kernels and records each launch.

    The mpsk kernel runs whatever the tuning cache chose (tuning.kernels_only). The counts come from
    the instrumented emulator (counters.py); the ideal from ideal.py; `emulator_seconds` is the
    emulator's wall time, which says nothing about a GPU's.
    """
    name = family_name(op)
    tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
    if not tensors:
        raise ValueError(f"profile({name}): no tensor among the arguments")
    wrong = [t.device for t in tensors if t.device.type != "cpu"]
    if wrong:
        raise ValueError(f"profile({name}): tensors must be on the CPU (the emulator runs them), got {wrong[0]}")
    seen: list[LaunchProfile] = []

    def observe(launch, fn, threads, group) -> None:
        seen.append(LaunchProfile(launch.kernel, threads, group, fn.static_thread_group_memory_length, None))

    custom_op = families.get(name).custom_op
    with config.patch(emulate_metal=True), tuning.kernels_only(), observe_launches(observe), torch.no_grad(), \
            counters.recording() as raw:
        start = time.perf_counter()
        out = custom_op(*args, **kwargs)
        seconds = time.perf_counter() - start
    if not seen:
        raise RuntimeError(f"profile({name}): the op launched no Metal kernel for these arguments "
                           f"(dtype {tensors[0].dtype} has none, or the op took its ATen path)")
    if raw is not None:
        if [r.kernel for r in raw] != [launch.kernel for launch in seen]:
            raise RuntimeError(f"profile({name}): the emulator counted launches {[r.kernel for r in raw]}, "
                               f"the op ran {[launch.kernel for launch in seen]}")
        seen = [dataclasses.replace(launch, counts=counters.memory_counts(r)) for launch, r in zip(seen, raw,
                                                                                                   strict=True)]
    dtype = tensors[0].dtype
    outputs = out if isinstance(out, (tuple, list)) else (out,)
    shape = "x".join(map(str, tensors[0].shape))
    return OpProfile(name, label or f"{shape} {str(dtype).removeprefix('torch.')}", dtype, tuple(seen),
                     ideal(name, args, kwargs, outputs), seconds)
