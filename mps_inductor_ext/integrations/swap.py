"""Replacing one module instance's forward and putting the original back exactly.

The replacement is an instance attribute, so the class (shared by every other model) is untouched,
and restoring removes it again (or puts back an instance forward that was there before, e.g. a
hook a library installed), leaving the module as it was.
"""

from __future__ import annotations

import types
from collections.abc import Callable

import torch

_MISSING = object()
_ORIGINAL = "_mpsk_original_forward"


def is_swapped(module: torch.nn.Module) -> bool:
    return _ORIGINAL in module.__dict__


def original_forward(module: torch.nn.Module) -> Callable:
    """The forward the module had before swap_forward (callable with the module's arguments)."""
    return module.__dict__[_ORIGINAL][1]


def swap_forward(module: torch.nn.Module, forward: Callable) -> None:
    """Makes `forward(module, *args, **kwargs)` the module's forward; `original_forward(module)` calls
    what it replaced."""
    if is_swapped(module):
        raise RuntimeError(f"{type(module).__name__} is already patched")
    previous = module.__dict__.get("forward", _MISSING)
    object.__setattr__(module, _ORIGINAL, (previous, module.forward))
    object.__setattr__(module, "forward", types.MethodType(forward, module))


def restore_forward(module: torch.nn.Module) -> None:
    previous, _ = module.__dict__.pop(_ORIGINAL)
    if previous is _MISSING:
        del module.__dict__["forward"]
    else:
        object.__setattr__(module, "forward", previous)
