"""Profiles a preset's cases, counting a case on its scaled shape where the full one would take
longer on the emulator than the caller allows."""

from __future__ import annotations

import torch

from .. import families
from .cases import ProfileCase
from .ideal import Ideal, ideal
from .kernels import OpProfile, profile


def full_ideal(case: ProfileCase, dtype: torch.dtype) -> Ideal:
    """The case's ideal at full size, from shapes alone (meta tensors: nothing is allocated)."""
    args, kwargs = case.build(dtype, "meta")
    out = families.get(case.family).custom_op(*args, **kwargs)
    return ideal(case.family, args, kwargs, out if isinstance(out, (tuple, list)) else (out,))


def run_case(case: ProfileCase, dtype: torch.dtype, max_seconds: float | None = None) -> OpProfile:
    """Profiles `case` at full size, unless it has a scaled form whose measured emulator time,
    times its factor, exceeds `max_seconds`: then its counts are the scaled shape's, multiplied by
    the factor (linear by the case's stated reason), and the profile says so."""
    if max_seconds is not None and max_seconds <= 0:
        raise ValueError(f"max_seconds must be positive, got {max_seconds!r}")
    if case.scaled is not None and max_seconds is not None:
        args, kwargs = case.scaled.build(dtype, "cpu")
        small = profile(case.family, *args, label=f"{case.label} (1/{case.scaled.factor})", **kwargs)
        estimate = small.emulator_seconds * case.scaled.factor
        if estimate > max_seconds:
            reason = (f"EXTRAPOLATED x{case.scaled.factor}: {case.scaled.reason} (full shape estimated at "
                      f"{estimate:.0f} s of emulator time, over the {max_seconds:g} s budget)")
            return small.extrapolated(case.scaled.factor, full_ideal(case, dtype), case.label, reason)
    args, kwargs = case.build(dtype, "cpu")
    return profile(case.family, *args, label=case.label, **kwargs)
