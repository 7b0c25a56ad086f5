"""Health checks for the mpsk ops: what `python -m mps_inductor_ext doctor` runs.

Each op registers a small standard set of cases and a PyTorch reference:

    from mps_inductor_ext.ops.checks import Case, register_check
    register_check("softmax", my_cases, my_reference)

``cases_fn()`` yields `Case` objects whose tensors are on the CPU (the doctor moves them to the
device of the active shader backend); ``reference_fn(*case.args, **case.kwargs)`` computes the
expected output with ATen. An op registered under ``torch.ops.mpsk`` without a check is a doctor
failure, so a new op cannot silently go unchecked. The norm checks are registered at the end of
this module; other op modules may register theirs where the op is defined.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

# The kernels-and-ops issue's tolerances (rtol = atol) per output dtype.
TOLERANCES: dict[torch.dtype, float] = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
NAMESPACE = "mpsk"


@dataclass(frozen=True)
class Case:
    """One call of the op: ``op(*args, **kwargs)``; ``tol`` overrides the dtype's tolerance."""

    label: str
    args: tuple
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    tol: float | None = None


@dataclass(frozen=True)
class Check:
    op: str
    cases_fn: Callable[[], Iterable[Case]]
    reference_fn: Callable[..., Any]


_checks: dict[str, Check] = {}


def op_name(name: str) -> str:
    """``"mpsk::rms_norm"``, ``"mpsk.rms_norm"`` or ``"rms_norm"`` -> ``"rms_norm"``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"op name must be a non-empty string, got {name!r}")
    for prefix in (f"{NAMESPACE}::", f"{NAMESPACE}."):
        name = name.removeprefix(prefix)
    if not name.isidentifier():
        raise ValueError(f"not an op name: {name!r}")
    return name


def register_check(op: str, cases_fn: Callable[[], Iterable[Case]], reference_fn: Callable[..., Any]) -> None:
    """Registers the doctor's cases and reference for ``torch.ops.mpsk.<op>``; one check per op."""
    name = op_name(op)
    if not callable(cases_fn) or not callable(reference_fn):
        raise TypeError("register_check(op, cases_fn, reference_fn): cases_fn and reference_fn must be callable")
    if name in _checks:
        raise ValueError(f"a doctor check for mpsk.{name} is already registered")
    _checks[name] = Check(name, cases_fn, reference_fn)


def get_check(op: str) -> Check | None:
    return _checks.get(op_name(op))


def registered_ops() -> list[str]:
    """Every op under ``torch.ops.mpsk`` the dispatcher knows, checked or not (the doctor's to-do list)."""
    prefix = f"{NAMESPACE}::"
    names = {n[len(prefix):].split(".", 1)[0] for n in torch._C._dispatch_get_all_op_names() if n.startswith(prefix)}
    return sorted(names)


# ---------------------------------------------------------------- rms_norm and layer_norm

NORM_SHAPES = [(1, 1), (3, 7), (4, 64), (2, 3, 130), (2, 4100)]
NORM_DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _shape_label(shape: tuple, dtype: torch.dtype) -> str:
    return f"{str(dtype).removeprefix('torch.')} {'x'.join(map(str, shape))}"


def _rms_norm_cases() -> Iterable[Case]:
    for i, (dtype, shape) in enumerate((d, s) for d in NORM_DTYPES for s in NORM_SHAPES):
        x = torch.randn(shape, generator=_gen(i)).to(dtype)
        w = torch.randn(shape[-1], generator=_gen(100 + i)).to(dtype)
        yield Case(_shape_label(shape, dtype), (x, w, 1e-6))
    x = torch.randn(4, 96, generator=_gen(7))
    yield Case("float32 4x96 no weight", (x, None, 1e-5))
    yield Case("float32 4x96 weight offset 1", (x, 0.1 * torch.randn(96, generator=_gen(8)), 1e-6, 1.0))


def _rms_norm_reference(x, weight, eps, weight_offset=0.0):
    from .norm import rms_norm_reference

    return rms_norm_reference(x, weight, eps, weight_offset)


def _layer_norm_cases() -> Iterable[Case]:
    for i, (dtype, shape) in enumerate((d, s) for d in NORM_DTYPES for s in NORM_SHAPES):
        x = (torch.randn(shape, generator=_gen(i)) + 0.5).to(dtype)
        w = torch.randn(shape[-1], generator=_gen(200 + i)).to(dtype)
        b = torch.randn(shape[-1], generator=_gen(300 + i)).to(dtype)
        yield Case(_shape_label(shape, dtype), (x, w, b, 1e-5))
    yield Case("float32 4x96 no affine", (torch.randn(4, 96, generator=_gen(9)), None, None, 1e-5))


def _layer_norm_reference(x, weight, bias, eps):
    """F.layer_norm in float32 (ATen's half CPU kernel rounds more than the fp32-accumulating kernel)."""
    f = None if weight is None else weight.float()
    b = None if bias is None else bias.float()
    return torch.nn.functional.layer_norm(x.float(), (x.shape[-1],), f, b, eps).to(x.dtype)


register_check("rms_norm", _rms_norm_cases, _rms_norm_reference)
register_check("layer_norm", _layer_norm_cases, _layer_norm_reference)
