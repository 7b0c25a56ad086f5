"""The `mps` backend: torch.mps.compile_shader itself, nothing re-implemented."""

from __future__ import annotations

import threading

import torch

_local = threading.local()


def is_available() -> bool:
    return torch.backends.mps.is_available()


def compiling_for_runtime() -> bool:
    """Whether this thread is inside compile_shader: lets the emulated mps device tell this project's
    libraries from the others torch.mps.compile_shader builds (Inductor's), to count their launches."""
    return getattr(_local, "depth", 0) > 0


def compile_shader(source: str):
    if not is_available():
        raise RuntimeError("the 'mps' shader backend needs an Apple GPU (torch.backends.mps.is_available())")
    _local.depth = getattr(_local, "depth", 0) + 1
    try:
        return torch.mps.compile_shader(source)
    finally:
        _local.depth -= 1
