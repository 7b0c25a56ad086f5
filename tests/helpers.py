"""Test helpers that are not fixtures (new ones live here rather than in conftest.py)."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from unittest import mock

from mps_inductor_ext.shaders.runtime import ShaderLibrary

_DEFINE = re.compile(r"^#define (\w+) (.*)$", re.M)


@dataclass(frozen=True)
class Variant:
    """One kernel looked up for a launch: its name and the constants its source was specialized with."""

    kernel: str
    defines: dict[str, str]


@contextlib.contextmanager
def launched_variants() -> Iterator[list[Variant]]:
    """Records every kernel the shader runtime hands out for a launch (eager ops and generated code
    both look kernels up through ShaderLibrary.get_kernel_function), so a test named for a variant
    (the looped form, vector loads) can assert that variant ran, not only that the output is right."""
    seen: list[Variant] = []
    real = ShaderLibrary.get_kernel_function

    def spy(self, name, *args, **kwargs):
        seen.append(Variant(name, dict(_DEFINE.findall(self.source))))
        return real(self, name, *args, **kwargs)

    with mock.patch.object(ShaderLibrary, "get_kernel_function", spy):
        yield seen
