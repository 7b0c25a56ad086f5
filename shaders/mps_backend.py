"""The `mps` backend: torch.mps.compile_shader itself, nothing re-implemented."""

from __future__ import annotations

import torch


def is_available() -> bool:
    return torch.backends.mps.is_available()


def compile_shader(source: str):
    if not is_available():
        raise RuntimeError("the 'mps' shader backend needs an Apple GPU (torch.backends.mps.is_available())")
    return torch.mps.compile_shader(source)
