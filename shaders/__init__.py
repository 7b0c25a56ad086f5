"""Metal shader runtime: the `mps` backend (torch.mps.compile_shader) and the `cpu` emulator."""

from pathlib import Path

from .errors import KernelError
from .runtime import BACKENDS, KernelFunction, ShaderLibrary, compile_shader, resolve_backend

SOURCE_DIR = Path(__file__).parent


def load_source(name: str) -> str:
    """Text of one of the package's `.metal` sources, by file stem."""
    path = SOURCE_DIR / f"{name}.metal"
    if not isinstance(name, str) or not path.is_file():
        known = sorted(p.stem for p in SOURCE_DIR.glob("*.metal"))
        raise ValueError(f"no Metal source named {name!r}; the package has {known}")
    return path.read_text()


__all__ = [
    "BACKENDS",
    "KernelError",
    "KernelFunction",
    "ShaderLibrary",
    "compile_shader",
    "load_source",
    "resolve_backend",
]
