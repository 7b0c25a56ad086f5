"""mps_inductor_ext: a torch.compile / Inductor backend for Apple Silicon with hand-written Metal kernels."""

from . import config

# First, before anything can ask libtorch about MPS: it reads its MPS hooks once, and the emulated
# device's must be registered by then for the accelerator API and autograd to see the device.
if config.emulate_mps_at_import():
    from .emulated_mps import emulate_mps_device as _emulate

    _emulate()

from . import diagnostics, ops, shaders  # noqa: E402
from .aoti import aoti_compile_and_package, aoti_load_package
from .backend import MetalKernelsNotUsedWarning
from .backend import register as _register_backend
from .diagnostics import explain
from .emulated_mps import count_launches, emulate_mps_device
from .integrations import PatchReport, kernel_mapping, patch, unpatch
from .integrations.hf_register import register_lazily as _register_with_transformers
from .passes import counters, reset_counters
from .profiling import profile
from .quantization import QuantizedLinear, quantize
from .shaders import KernelError, compile_shader

__version__ = "0.1.0"

__all__ = [
    "KernelError",
    "MetalKernelsNotUsedWarning",
    "PatchReport",
    "QuantizedLinear",
    "__version__",
    "aoti_compile_and_package",
    "aoti_load_package",
    "compile_shader",
    "config",
    "count_launches",
    "counters",
    "diagnostics",
    "emulate_mps_device",
    "explain",
    "ops",
    "kernel_mapping",
    "patch",
    "profile",
    "quantize",
    "reset_counters",
    "shaders",
    "unpatch",
]

_register_backend()
_register_with_transformers()
