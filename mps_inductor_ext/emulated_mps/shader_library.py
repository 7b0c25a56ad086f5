"""torch.mps.compile_shader on the emulated mps device: the emulator's library, with the argument
rules of torch's MPS encoder and a count of each launch.

torch binds an `mps` tensor as a buffer at its storage offset; a CPU tensor only if it is 0-dim,
as bytes of its value (a float64 one silently downcast to float32, since Metal has no double), and
any other CPU tensor is an error ("Passed CPU tensor to MPS op"; see mtl_setBuffer in ATen's
mps/OperationUtils.h). Inductor relies on the 0-dim rule: with dynamic shapes it passes Python
floats it lifted to graph inputs as 0-dim float64 CPU tensors.
"""

from __future__ import annotations

import torch

from ..shaders import mps_backend
from ..shaders.emulator import EmulatedKernel, compile_shader
from . import launches

# 0-dim CPU tensor dtype -> the arg_casts name of the bytes torch sets for it.
_SCALAR_CASTS: dict[torch.dtype, str] = {
    torch.float64: "float32",  # torch downcasts
    torch.float32: "float32",
    torch.float16: "fp16",
    torch.bfloat16: "bf16",
    torch.int64: "int64",
    torch.int32: "int32",
    torch.int16: "int16",
    torch.int8: "int8",
    torch.uint8: "uint8",
    torch.bool: "uint8",
}


def _bind_like_mps(kernel: str, args: tuple, arg_casts: dict | None) -> tuple[list, dict | None]:
    out, casts = list(args), dict(arg_casts or {})
    for i, a in enumerate(args):
        if not isinstance(a, torch.Tensor) or a.device.type == "mps":
            continue
        if a.device.type != "cpu" or a.dim() != 0:
            raise RuntimeError(
                f"kernel '{kernel}' argument {i}: Passed CPU tensor to MPS op (a {a.device} tensor of shape "
                f"{tuple(a.shape)}; only 0-dim CPU tensors bind, as their value)"
            )
        if a.dtype not in _SCALAR_CASTS:
            raise TypeError(f"kernel '{kernel}' argument {i}: a 0-dim {a.dtype} CPU tensor has no Metal scalar type")
        out[i] = float(a.item()) if a.dtype.is_floating_point else int(a.item())
        if _SCALAR_CASTS[a.dtype] not in ("float32", "int64"):  # a Python float / int binds as those
            casts[i] = _SCALAR_CASTS[a.dtype]
    return out, (casts or None)


class MpsKernel:
    """One kernel of an emulated library, called as torch's `_mps_MetalKernel`."""

    def __init__(self, kernel: EmulatedKernel, origin: str):
        self._kernel, self._origin = kernel, origin

    def __call__(self, *args, arg_casts=None, **kwargs):
        bound, casts = _bind_like_mps(self._kernel.name, args, arg_casts)
        launches.record_metal_launch(self._origin)
        return self._kernel(*bound, arg_casts=casts, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self._kernel, name)

    def __repr__(self) -> str:
        return repr(self._kernel)


# The name Inductor's MPS codegen gives every Metal kernel it writes: `generated_kernel_<n>` in its
# Python wrapper's libraries, `generated_kernel` in its C++ wrapper's (cpp_wrapper_mps.py).
INDUCTOR_KERNEL_PREFIX = "generated_kernel"


class MpsLibrary:
    """What torch._C._mps_compileShader returns, on the emulator. Its launches are filed as Inductor's
    (a kernel named by Inductor's codegen) or as this project's (a library the shader runtime compiled,
    which is also how the emulated AOTI shim compiles every library), else as Inductor's."""

    def __init__(self, lib, for_runtime: bool):
        self._lib, self._for_runtime = lib, for_runtime

    def __getattr__(self, name: str):
        value = getattr(self._lib, name)
        if not isinstance(value, EmulatedKernel):
            return value
        origin = "inductor" if name.startswith(INDUCTOR_KERNEL_PREFIX) or not self._for_runtime else "mpsk"
        return MpsKernel(value, origin)

    def __dir__(self) -> list[str]:
        return dir(self._lib)


def compile_mps_shader(source: str) -> MpsLibrary:
    """torch._C._mps_compileShader's stand-in (torch.mps.compile_shader has inlined torch's headers)."""
    return MpsLibrary(compile_shader(source), mps_backend.compiling_for_runtime())
