"""Test helpers that are not fixtures (new ones live here rather than in conftest.py)."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from unittest import mock

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


def dequantize_from_bytes(w_packed, scales, biases, group_size: int, bits: int):
    """The (N, K) float64 weight of quantization.py's format, read from its documented layout rather
    than through the package's code: int32 words as little-endian bytes, two 4-bit values per byte
    (low nibble first) or one 8-bit value, and W = scale * q + bias per group of `group_size`."""
    import torch

    raw = w_packed.contiguous().view(torch.uint8).to(torch.int64)
    q = torch.stack((raw & 15, raw >> 4), dim=-1).flatten(1) if bits == 4 else raw
    group = torch.arange(q.shape[1]) // group_size
    return scales.double()[:, group] * q.double() + biases.double()[:, group]
