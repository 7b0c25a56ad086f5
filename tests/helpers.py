"""Test helpers that are not fixtures, for every folder of tests/ (pyproject's pythonpath has tests/):
`from helpers import ...`. conftest.py keeps only fixtures and collection settings."""

from __future__ import annotations

import collections
import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from unittest import mock

import pytest
import torch
import torch.nn.functional as F

from mps_inductor_ext import config, emulated_mps
from mps_inductor_ext.ops.tolerances import MODEL_TOLERANCE, TOLERANCES, op_tolerances, tolerance
from mps_inductor_ext.shaders.runtime import KernelFunction, ShaderLibrary

__all__ = [
    "HAS_MPS", "MODEL_TOLERANCE", "TOLERANCES", "Variant", "assert_close_dtype", "dequantize_from_bytes",
    "emulated_metal", "kernel_counts", "launched_variants", "nan_like", "op_tolerances", "requires_mps",
    "sdpa_reference", "tolerance",
]

# A real Mac's MPS. is_built() first: asking is_available() of a CPU build would make libtorch read
# its MPS hooks before the emulated device (tests/mps_device) can register its own.
HAS_MPS = torch.backends.mps.is_built() and torch.backends.mps.is_available() and not emulated_mps.installed()
requires_mps = pytest.mark.skipif(not HAS_MPS, reason="no MPS device on this machine")


def nan_like(t: torch.Tensor) -> torch.Tensor:
    """An output buffer poisoned with NaN, so elements a kernel never writes are caught."""
    return torch.full_like(t, float("nan"))


def assert_close_dtype(got: torch.Tensor, ref: torch.Tensor, tol: float | None = None) -> None:
    """Compares in float32 with the dtype's tolerance from the product's table (the one `doctor` uses,
    mps_inductor_ext/ops/tolerances.py); NaN in `got` (an unwritten element) fails."""
    tol = TOLERANCES[got.dtype] if tol is None else tol
    assert got.dtype == ref.dtype, (got.dtype, ref.dtype)
    torch.testing.assert_close(got.float(), ref.float(), rtol=tol, atol=tol)

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


def dequantize_from_bytes(w_packed, scales, biases, group_size: int, bits: int):
    """The (N, K) float64 weight of quantization.py's format, read from its documented layout rather
    than through the package's code: int32 words as little-endian bytes, two 4-bit values per byte
    (low nibble first) or one 8-bit value, and W = scale * q + bias per group of `group_size`."""
    raw = w_packed.contiguous().view(torch.uint8).to(torch.int64)
    q = torch.stack((raw & 15, raw >> 4), dim=-1).flatten(1) if bits == 4 else raw
    group = torch.arange(q.shape[1]) // group_size
    return scales.double()[:, group] * q.double() + biases.double()[:, group]


def sdpa_reference(q, k, v, mask=None, scale=None, causal=False, window=-1):
    """mpsk::attention's expected output: F.scaled_dot_product_attention in float64, cast back; the
    window (and causal with a mask, a pair ATen's math path refuses) as an explicit bool mask."""
    if window > 0 or (causal and mask is not None):
        window = window if window > 0 else k.shape[2] + q.shape[2]
        i = torch.arange(q.shape[2])[:, None]
        j = torch.arange(k.shape[2])[None, :]
        keep = (j > i - window) & (j <= i if causal else True)
        if mask is None:
            mask = keep
        elif mask.dtype == torch.bool:
            mask = mask & keep
        else:
            mask = mask.double().masked_fill(~keep, float("-inf"))
        causal = False
    if mask is not None and mask.dtype != torch.bool:
        mask = mask.double()
    out = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=mask, is_causal=causal,
                                         scale=scale, enable_gqa=True)
    return out.to(q.dtype)
