"""What every mpsk op shares: argument checks, where its kernel runs, dtype names."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import threading
from collections.abc import Iterator

import torch

from .. import config, tuning
from ..shaders.emulator.sanitizer import note_uninitialized

METAL_DTYPES = {torch.float32: "float", torch.float16: "half", torch.bfloat16: "bfloat"}
FLOAT_DTYPES = (*METAL_DTYPES, torch.float64)


_poison = threading.local()


@contextlib.contextmanager
def poisoned_outputs() -> Iterator[None]:
    """Makes Metal-path ops allocate outputs and scratch filled with NaN (tests use it).

    A kernel that fails to write an element then leaves a NaN the comparison catches,
    where torch.empty would leave whatever was in memory.
    """
    before = getattr(_poison, "on", False)
    _poison.on = True
    try:
        yield
    finally:
        _poison.on = before


def new_buffer(shape, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An uninitialized output or scratch buffer (NaN-filled under poisoned_outputs); noted as such
    for the emulator's initcheck (MPSK_EMULATOR_CHECKS)."""
    if getattr(_poison, "on", False):
        return note_uninitialized(torch.full(shape, float("nan"), dtype=dtype, device=device))
    return note_uninitialized(torch.empty(shape, dtype=dtype, device=device))


def metal_runtime(device: torch.device | str, dtype: torch.dtype | None = None) -> str | None:
    """Where an op's Metal kernel runs for a tensor on `device` (of `dtype`, when given): "mps" (the
    GPU, through torch.mps.compile_shader), "cpu" (the emulator, under config.emulate_metal), or
    None (ATen math; so is every dtype Metal has no kernel for, float64 included).

    The one answer to "can a Metal kernel run here", asked by the eager op, the pattern pass, the
    lowerings and decompositions, and the backend's warning alike.
    """
    if dtype is not None and dtype not in METAL_DTYPES:
        return None
    kind = torch.device(device).type
    if kind == "mps":
        return "mps"
    if kind == "cpu" and config.emulate_metal:
        return "cpu"
    return None


def tuned_runtime(op: str, args: tuple) -> str | None:
    """`metal_runtime` for an op call (its first tensor argument's device and dtype), except None
    where `python -m mps_inductor_ext tune` measured the native op faster than the kernel for
    calls like this one on this machine (tuning.prefers_native): then the ATen reference runs."""
    first = next((a for a in args if isinstance(a, torch.Tensor)), None)
    if first is None:
        raise TypeError(f"mpsk.{op}: no tensor among the arguments")
    runtime = metal_runtime(first.device, first.dtype)
    if runtime is None or tuning.prefers_native(op, args):
        return None
    return runtime


def check_tensor(op: str, name: str, t: object, *, min_dim: int = 0, dim: int | None = None) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"mpsk.{op}: {name} must be a Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"mpsk.{op}: {name} must be float32, float16 or bfloat16, got {t.dtype}")
    if t.device.type == "mps" and t.dtype == torch.float64:
        raise TypeError(f"mpsk.{op}: {name} is float64, which MPS does not support")
    if dim is not None and t.dim() != dim:
        raise ValueError(f"mpsk.{op}: {name} must have {dim} dimensions, got shape {tuple(t.shape)}")
    if t.dim() < min_dim:
        raise ValueError(f"mpsk.{op}: {name} needs at least {min_dim} dimension(s), got shape {tuple(t.shape)}")
    return t


def check_like(op: str, name: str, t: torch.Tensor, ref: torch.Tensor, ref_name: str) -> None:
    if t.device != ref.device:
        raise ValueError(f"mpsk.{op}: {name} is on {t.device} but {ref_name} is on {ref.device}")
    if t.dtype != ref.dtype:
        raise TypeError(f"mpsk.{op}: {name} is {t.dtype} but {ref_name} is {ref.dtype}; they must match")


def check_finite(op: str, value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"mpsk.{op}: {name} must be a finite float, got {value!r}")
    return float(value)


def check_eps(op: str, eps: object) -> float:
    eps = check_finite(op, eps, "eps")
    if eps < 0:
        raise ValueError(f"mpsk.{op}: eps must be non-negative, got {eps!r}")
    return eps


def as_rows(x: torch.Tensor) -> torch.Tensor:
    """`x` as a (rows, last) view with unit column stride and one row stride, copying only if needed."""
    cols = x.shape[-1]
    if x.dim() == 1:
        return x.contiguous().view(1, cols)
    if x.stride(-1) == 1:
        try:
            return x.view(-1, cols)
        except RuntimeError:
            pass
    return x.reshape(-1, cols).contiguous()


def capped(policy, max_threads: int):
    """A row kernel's policy with at most `max_threads` threads per row (see launch.fit_to_pipelines)."""
    return dataclasses.replace(policy, max_threads_per_row=min(policy.max_threads_per_row, max_threads))


DYNAMIC_ROW_THREADS = 256  # threads per row when the row length is symbolic (known only at run time)


def threads_per_row(kernel: str, dtype: torch.dtype, cols, vec: int, policy) -> int:
    """Threads per row for a row kernel: the policy's fixed size, else the measured best
    (tuning cache), else enough SIMD-groups for one `vec`-wide load per thread. A symbolic row
    length (a compiled graph's dynamic hidden size) takes DYNAMIC_ROW_THREADS."""
    if policy.threads_per_row:
        return policy.threads_per_row
    if not isinstance(cols, int):
        return min(policy.max_threads_per_row, DYNAMIC_ROW_THREADS)
    tuned = tuning.lookup(kernel, dtype, cols)
    if tuned:
        return min(tuned, policy.max_threads_per_row)
    return min(policy.max_threads_per_row, max(32, -(-cols // (vec * 32)) * 32))
