"""CPU emulator of Metal compute: the `cpu` backend of the shader runtime."""

from .headers import embed_torch_headers
from .library import EmulatedKernel, EmulatedLibrary

__all__ = ["EmulatedKernel", "EmulatedLibrary", "compile_shader"]


def compile_shader(source: str, strict: bool = False) -> EmulatedLibrary:
    """torch.mps.compile_shader's counterpart on the emulator: torch's headers are inlined as
    torch inlines them. `strict` turns on the lint for this project's own kernels: every lane
    must reach each SIMD-group function and barrier (Metal itself lets inactive lanes skip)."""
    if not isinstance(strict, bool):
        raise TypeError(f"strict must be a bool, got {type(strict).__name__}")
    return EmulatedLibrary(embed_torch_headers(source), strict=strict)
