"""CPU emulator of Metal compute: the `cpu` backend of the shader runtime."""

from .library import EmulatedKernel, EmulatedLibrary

__all__ = ["EmulatedKernel", "EmulatedLibrary", "compile_shader"]


def compile_shader(source: str) -> EmulatedLibrary:
    """torch.mps.compile_shader's counterpart on the emulator."""
    return EmulatedLibrary(source)
