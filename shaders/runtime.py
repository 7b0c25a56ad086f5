"""The shader runtime: AOTInductor's MPS shim as Python objects, over either backend.

`ShaderLibrary` ~ aoti_torch_mps_create_shader_library, `get_kernel_function` ~
aoti_torch_mps_get_kernel_function, and `KernelFunction` has the shim's
start_encoding / set_arg_tensor / set_arg_int / dispatch / run_command_block.
Every dispatch ends in the same call on both backends, the convenience call of
torch.mps.compile_shader (`kernel(*args, threads=..., group_size=...)`), so the
code tested on the emulator is the code that runs on a Mac.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

import torch

from . import mps_backend

BACKENDS = ("auto", "mps", "cpu")
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1

_cache: dict[tuple[str, str, bool, bool], object] = {}
_cache_lock = threading.Lock()


def _emulator_fast_math() -> bool:
    from .emulator.library import fast_math_enabled

    return fast_math_enabled()


def resolve_backend(backend: str) -> str:
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "mps" if mps_backend.is_available() else "cpu"
    if backend == "mps" and not mps_backend.is_available():
        raise RuntimeError(
            "backend='mps' needs an Apple GPU, but torch.backends.mps.is_available() is False on this "
            "machine; use backend='cpu' (the emulator) or 'auto'"
        )
    return backend


def _compile(source: str, backend: str, strict: bool):
    key = (backend, source, strict, backend == "cpu" and _emulator_fast_math())
    with _cache_lock:
        lib = _cache.get(key)
    if lib is None:
        if backend == "mps":
            lib = mps_backend.compile_shader(source)
        else:
            from .emulator import compile_shader as emulated_compile

            lib = emulated_compile(source, strict=strict)
        with _cache_lock:
            lib = _cache.setdefault(key, lib)
    return lib


class ShaderLibrary:
    """A compiled Metal library on the `mps` or the emulated `cpu` backend.

    `strict=True` is this project's lint for its own kernels, run by the emulator only (a Mac
    accepts and ignores it, so the call is the same on both): every lane must reach each
    SIMD-group function and barrier, where Metal lets inactive lanes skip them.
    """

    def __init__(self, source: str, backend: str = "auto", strict: bool = False):
        if not isinstance(source, str):
            raise TypeError(f"shader source must be a str, got {type(source).__name__}")
        if not source.strip():
            raise ValueError("shader source is empty")
        if not isinstance(strict, bool):
            raise TypeError(f"strict must be a bool, got {type(strict).__name__}")
        self.backend = resolve_backend(backend)
        self.source = source
        self.strict = strict
        self._lib = _compile(source, self.backend, strict)

    def get_kernel_function(self, name: str, constants: dict | None = None) -> KernelFunction:
        """The shim's get_kernel_function. `constants` sets Metal function constants by name or
        [[function_constant(n)]] index; torch.mps.compile_shader cannot, so only the emulator takes it."""
        if not isinstance(name, str):
            raise TypeError(f"kernel name must be a str, got {type(name).__name__}")
        if constants is None:
            return KernelFunction(name, getattr(self._lib, name), self.backend)
        if self.backend == "mps":
            raise NotImplementedError(
                "torch.mps.compile_shader cannot set Metal function constants (it makes pipelines without "
                "MTLFunctionConstantValues); specialize the source with #define instead"
            )
        return KernelFunction(name, getattr(self._lib.specialized(constants), name), self.backend)

    def __getattr__(self, name: str):
        """`lib.<kernel>(*args, threads=..., group_size=..., arg_casts=...)`, as torch.mps.compile_shader."""
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._lib, name)

    def __dir__(self) -> list[str]:
        return sorted(set(dir(self._lib)))

    def __repr__(self) -> str:
        return f"<ShaderLibrary backend={self.backend} kernels={dir(self._lib)}>"


def _dims(value, what: str) -> list[int]:
    dims = [value] if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(dims, Sequence) or isinstance(dims, str) or not 1 <= len(dims) <= 3:
        raise ValueError(f"{what} must be an int or a sequence of 1 to 3 ints, got {value!r}")
    out = []
    for d in dims:
        if isinstance(d, bool) or not isinstance(d, int) or d < 1:
            raise ValueError(f"{what} entries must be positive ints, got {value!r}")
        out.append(int(d))
    return out


class _Encoding(threading.local):
    """One thread's command block and arguments: a compiled model, and so each of its kernels, may
    run in several threads at once."""

    args: dict[int, object] | None = None
    in_block: bool = False


class KernelFunction:
    """One kernel, driven the way AOTInductor's generated C++ drives the MPS shim."""

    def __init__(self, name: str, fn, backend: str = "cpu"):
        self.name = name
        self._fn = fn
        self._backend = backend
        self._encoding = _Encoding()

    @property
    def _args(self) -> dict[int, object] | None:
        return self._encoding.args

    @_args.setter
    def _args(self, value: dict[int, object] | None) -> None:
        self._encoding.args = value

    @property
    def _in_block(self) -> bool:
        return self._encoding.in_block

    @_in_block.setter
    def _in_block(self, value: bool) -> None:
        self._encoding.in_block = value

    @property
    def max_threads_per_threadgroup(self) -> int:
        return self._fn.max_threads_per_threadgroup

    @property
    def thread_execution_width(self) -> int:
        return self._fn.thread_execution_width

    @property
    def static_thread_group_memory_length(self) -> int:
        return self._fn.static_thread_group_memory_length

    def run_command_block(self, callback: Callable[[], None]) -> None:
        if not callable(callback):
            raise TypeError("run_command_block needs a callable")
        if self._in_block:
            raise RuntimeError(f"kernel '{self.name}': command blocks do not nest")
        self._in_block = True
        try:
            callback()
        finally:
            self._in_block = False
            self._args = None

    def start_encoding(self) -> None:
        if not self._in_block:
            raise RuntimeError(f"kernel '{self.name}': start_encoding outside run_command_block")
        self._args = {}

    def _set(self, idx: int, value) -> None:
        if self._args is None:
            raise RuntimeError(f"kernel '{self.name}': set an argument before start_encoding")
        if isinstance(idx, bool) or not isinstance(idx, int) or idx < 0:
            raise ValueError(f"kernel '{self.name}': argument index must be a non-negative int, got {idx!r}")
        self._args[idx] = value

    def set_arg_tensor(self, idx: int, tensor: torch.Tensor) -> None:
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"kernel '{self.name}': set_arg_tensor({idx}) needs a tensor, got {type(tensor).__name__}")
        self._set(idx, tensor)

    def set_arg_int(self, idx: int, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"kernel '{self.name}': set_arg_int({idx}) needs an int, got {type(value).__name__}")
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise ValueError(f"kernel '{self.name}': set_arg_int({idx}) value {value} does not fit in int64")
        self._set(idx, value)

    def dispatch(
        self,
        length: int | Sequence[int],
        group_size: int | Sequence[int] | None = None,
        threadgroup_memory: dict[int, int] | None = None,
    ) -> None:
        """Dispatches with the arguments set since start_encoding, through the convenience call.

        Two things only the emulator takes (torch's call binds arguments by position and has no
        threadgroup-memory sizes): arguments with holes in their indices, and `threadgroup_memory`
        ({k: nbytes} for [[threadgroup(k)]] parameters)."""
        if self._args is None:
            raise RuntimeError(f"kernel '{self.name}': dispatch before start_encoding")
        threads = _dims(length, "length")
        group = None if group_size is None else _dims(group_size, "group_size")
        if group is not None and len(group) != len(threads):
            raise ValueError(
                f"kernel '{self.name}': length has {len(threads)} dimensions but group_size has {len(group)}"
            )
        missing = [i for i in range(max(self._args, default=-1) + 1) if i not in self._args]
        if missing or threadgroup_memory is not None:
            if self._backend == "mps":
                what = f"arguments {missing} were not set" if missing else "threadgroup_memory was given"
                raise NotImplementedError(
                    f"kernel '{self.name}': {what}; torch.mps.compile_shader binds arguments by position and "
                    f"cannot size threadgroup memory, so only the emulator takes this"
                )
            self._fn.dispatch(dict(self._args), threads, group, threadgroup_memory=threadgroup_memory)
            return
        args = [self._args[i] for i in range(len(self._args))]
        self._fn(*args, threads=threads, group_size=group)


def compile_shader(source: str, backend: str = "auto", strict: bool = False) -> ShaderLibrary:
    """Compiles Metal source for `backend` ("auto", "mps" or "cpu").

    "auto" picks mps where torch.backends.mps.is_available(), else the CPU emulator.
    Compile errors raise SyntaxError carrying the compiler's message. `strict`: see ShaderLibrary.
    """
    return ShaderLibrary(source, backend, strict)
