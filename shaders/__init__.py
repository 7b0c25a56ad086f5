"""Metal shader runtime: the `mps` backend (torch.mps.compile_shader) and the `cpu` emulator."""

from pathlib import Path

from .errors import KernelError
from .runtime import BACKENDS, KernelFunction, ShaderLibrary, compile_shader, resolve_backend

SOURCE_DIR = Path(__file__).parent


COMMON = "common"  # shared definitions every kernel file may use (included once, by a guard)


def load_source(name: str) -> str:
    """Text of one of the package's `.metal` sources, by file stem, with `common.metal` ahead of it,
    so every kernel file sees the same helpers and instantiation macro however files are combined."""
    path = SOURCE_DIR / f"{name}.metal"
    if not isinstance(name, str) or not path.is_file():
        known = sorted(p.stem for p in SOURCE_DIR.glob("*.metal"))
        raise ValueError(f"no Metal source named {name!r}; the package has {known}")
    text = path.read_text()
    return text if name == COMMON else (SOURCE_DIR / f"{COMMON}.metal").read_text() + text


EXAMPLE_DIR = SOURCE_DIR / "examples"


def load_example(name: str) -> str:
    """Text of a sample kernel (`shaders/examples/<name>.metal`), written as a user would write one."""
    path = EXAMPLE_DIR / f"{name}.metal"
    if not isinstance(name, str) or not path.is_file():
        known = sorted(p.stem for p in EXAMPLE_DIR.glob("*.metal"))
        raise ValueError(f"no example kernel named {name!r}; the package has {known}")
    return path.read_text()


__all__ = [
    "BACKENDS",
    "KernelError",
    "KernelFunction",
    "ShaderLibrary",
    "compile_shader",
    "load_example",
    "load_source",
    "resolve_backend",
]
