"""Test helpers that are not fixtures (new ones live here rather than in conftest.py)."""

from __future__ import annotations

import collections
import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from unittest import mock

import pytest

from mps_inductor_ext import config
from mps_inductor_ext.shaders.runtime import KernelFunction, ShaderLibrary

_DEFINE = re.compile(r"^#define (\w+) (.*)$", re.M)


@dataclass(frozen=True)
class Variant:
    """One kernel looked up for a launch: its name and the constants its source was specialized with."""

    kernel: str
    defines: dict[str, str]


@contextlib.contextmanager
def launched_variants() -> Iterator[list[Variant]]:
    """Records every kernel dispatched through the shader runtime (eager ops and generated code both
    launch there), with the constants its source was specialized with, so a test named for a variant
    (the looped form, vector loads) can assert that variant ran, not only that the output is right."""
    seen: list[Variant] = []
    variants: dict[int, Variant] = {}
    real_get, real_dispatch = ShaderLibrary.get_kernel_function, KernelFunction.dispatch

    def get(self, name, *args, **kwargs):
        fn = real_get(self, name, *args, **kwargs)
        variants[id(fn)] = Variant(name, dict(_DEFINE.findall(self.source)))
        return fn

    def dispatch(self, *args, **kwargs):
        seen.append(variants.get(id(self), Variant(self.name, {})))
        return real_dispatch(self, *args, **kwargs)

    with mock.patch.object(ShaderLibrary, "get_kernel_function", get), \
            mock.patch.object(KernelFunction, "dispatch", dispatch):
        yield seen


def kernel_counts(seen: list[Variant]) -> collections.Counter:
    """How many times each kernel (by name) was launched in a launched_variants() record."""
    return collections.Counter(v.kernel for v in seen)


@pytest.fixture
def emulated_metal() -> Iterator[None]:
    """The ops' Metal kernels on the CPU emulator for the test (import it and name it in usefixtures)."""
    with config.patch(emulate_metal=True):
        yield
