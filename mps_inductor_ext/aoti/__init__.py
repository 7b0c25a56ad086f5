"""AOTInductor support: `.pt2` packages that keep the mpsk kernels, and the emulated MPS shim
(`aoti_torch_mps_*`) for machines whose libtorch has none."""

from .emulated_shim import last_error, load
from .package import aoti_compile_and_package, aoti_load_package

__all__ = ["aoti_compile_and_package", "aoti_load_package", "last_error", "load"]
