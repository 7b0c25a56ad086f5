"""mps_inductor_ext: a torch.compile / Inductor backend for Apple Silicon with hand-written Metal kernels."""

from . import config, ops, shaders
from .shaders import KernelError, compile_shader

__version__ = "0.1.0"

__all__ = ["KernelError", "compile_shader", "config", "ops", "shaders", "__version__"]
