import pytest
import torch
from mps_inductor_ext.shaders import compile_shader

HAS_MPS = torch.backends.mps.is_available()
requires_mps = pytest.mark.skipif(not HAS_MPS, reason="no MPS device on this machine")


@pytest.fixture
def emulate():
    """Compiles Metal source on the CPU emulator."""

    def build(source: str):
        return compile_shader(source, backend="cpu")

    return build


def nan_like(t: torch.Tensor) -> torch.Tensor:
    """An output buffer poisoned with NaN, so elements a kernel never writes are caught."""
    return torch.full_like(t, float("nan"))
