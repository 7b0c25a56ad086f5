"""mps_inductor_ext: a torch.compile / Inductor backend for Apple Silicon with hand-written Metal kernels."""

from . import config, diagnostics, ops, shaders
from .aoti import aoti_compile_and_package, aoti_load_package
from .backend import MetalKernelsNotUsedWarning
from .backend import register as _register_backend
from .diagnostics import explain
from .passes import counters, reset_counters
from .shaders import KernelError, compile_shader

__version__ = "0.1.0"

__all__ = [
    "KernelError",
    "MetalKernelsNotUsedWarning",
    "__version__",
    "aoti_compile_and_package",
    "aoti_load_package",
    "compile_shader",
    "config",
    "counters",
    "diagnostics",
    "explain",
    "ops",
    "reset_counters",
    "shaders",
]

_register_backend()
