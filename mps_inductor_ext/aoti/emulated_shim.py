"""AOTInductor's MPS shim (`aoti_torch_mps_*` of shim_mps.h) on the CPU emulator.

libtorch defines the shim only on macOS. `load()` builds `shim_emulator.cpp` with zig's clang,
loads it with RTLD_GLOBAL (so an AOTInductor model loaded afterwards resolves its
`aoti_torch_mps_*` calls against it) and installs the Python callbacks every shim call is
forwarded to. The callbacks drive the shader runtime the tests verify,
`ShaderLibrary(source, backend="auto")` and its `KernelFunction`, so AOTI code and the Python
wrapper share one launch path and the emulator's checks. "auto" is the emulator's `cpu` backend,
or `mps` on the emulated mps device (mps_inductor_ext.emulated_mps), which is torch.mps.compile_shader
answered by the emulator, with the argument rules of torch's MPS encoder, as on a Mac.

Tensors arrive as AtenTensorHandles (`at::Tensor*` owned by the caller). A callback borrows one by
asking libtorch for a second handle to the same TensorImpl (`aoti_torch_new_tensor_handle`, a
reference-count increment) and turning that one into a Python tensor
(`torch._C._aoti.alloc_tensor_by_stealing_from_void_ptr`). Nothing is copied and the caller's
handle stays the caller's; the Python tensor is the very tensor (storage, offset, sizes,
strides), so the emulator stages, aliases and bounds-checks exactly what the model passed.

`aoti_torch_mps_malloc` / `free` / `memcpy` / `copy_buffer` are plain host-memory operations here
(on a Mac they act on MTLBuffers in unified memory).

Where this shim differs from, or adds to, the Mac's:
- Errors (a SyntaxError from a compile, a KernelError from a launch, a ValueError or TypeError from
  a bad launch) are non-zero returns; the message is `last_error()` (C: `mpsk_shim_last_error()`),
  per thread. `aoti_torch_mps_run_command_block` also fails when any call inside its block failed,
  keeping the first failure's message, so code that checks none of the inner calls (Inductor's own
  launches) still fails here. A Mac's does not: `mac_faithful()` switches to its behaviour, where only
  code that checks the inner calls' codes (as this project's launch sites do) sees the failure.
- `aoti_torch_mps_shared_callback` reads the std::function the generated code passes with
  libstdc++'s layout, since AOTInductor builds models on Linux with g++
  (torch._inductor.cpp_builder). Code built against libc++ (e.g. by zig's clang) must pass its own
  trampoline to run_command_block instead.
- The block callback must not throw: no C++ exception can cross the Python frames between
  run_command_block and the block.
- After Python starts shutting down every call fails ("no Python runtime installed"), so a model's
  static library deleters, which run after that, return an error instead of crashing.
"""

from __future__ import annotations

import atexit
import ctypes
import functools
import hashlib
import itertools
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch

from ..shaders import KernelFunction, ShaderLibrary
from ..shaders.emulator import cache, toolchain

SOURCE = Path(__file__).with_name("shim_emulator.cpp")
ABI_VERSION = 1  # MPSK_SHIM_ABI_VERSION in shim_emulator.cpp
TORCH_INCLUDE = Path(torch.__file__).parent / "include"

# No C++ standard library (-nostdlib++): the shim is C-style, so zig need not build libc++.
COMPILE_FLAGS = (
    "-x", "c++",
    "-std=c++17",
    "-O2",
    "-fPIC",
    "-shared",
    "-nostdlib++",
    "-fno-exceptions",
    "-fno-rtti",
    "-fvisibility=hidden",
    "-Wall",
    "-Wextra",
    "-Werror",
)
# The shim's definitions against the installed torch's own declarations: a mismatch in any
# signature is a compile error. Compiled to an object only, so libc++ (which torch's headers
# need) is not linked and zig need not build it.
HEADER_CHECK_FLAGS = (
    "-x", "c++",
    "-std=c++17",
    "-c",
    "-DMPSK_SHIM_CHECK_HEADER",
    "-isystem", str(TORCH_INCLUDE),
)

_INT32 = ctypes.c_int32
_U64 = ctypes.c_uint64
_CREATE = ctypes.CFUNCTYPE(_INT32, ctypes.c_char_p, ctypes.POINTER(_U64))
_DELETE = ctypes.CFUNCTYPE(_INT32, _U64)
_GET_KERNEL = ctypes.CFUNCTYPE(_INT32, _U64, ctypes.c_char_p, ctypes.POINTER(_U64))
_START = ctypes.CFUNCTYPE(_INT32, _U64)
_SET_TENSOR = ctypes.CFUNCTYPE(_INT32, _U64, ctypes.c_uint32, ctypes.c_void_p)
_SET_INT = ctypes.CFUNCTYPE(_INT32, _U64, ctypes.c_uint32, ctypes.c_int64)
_DISPATCH = ctypes.CFUNCTYPE(_INT32, _U64, ctypes.POINTER(_U64), _U64, ctypes.POINTER(_U64))
_RUN_BLOCK = ctypes.CFUNCTYPE(_INT32, _U64, ctypes.c_void_p, ctypes.c_void_p)


class _Callbacks(ctypes.Structure):
    """MpskShimCallbacks in shim_emulator.cpp."""

    _fields_ = [
        ("version", _INT32),
        ("create_library", _CREATE),
        ("delete_library", _DELETE),
        ("get_kernel", _GET_KERNEL),
        ("start_encoding", _START),
        ("set_arg_tensor", _SET_TENSOR),
        ("set_arg_int", _SET_INT),
        ("dispatch", _DISPATCH),
        ("run_block", _RUN_BLOCK),
    ]


# -- build --------------------------------------------------------------------------------------


@functools.cache
def _zig_version() -> str:
    proc = subprocess.run([toolchain.zig_executable(), "version"], capture_output=True, text=True, check=False)
    return proc.stdout.strip()


def library_path() -> Path:
    """Where the built shim is cached: keyed by its source, the flags, torch's version and zig's."""
    h = hashlib.sha256()
    for part in (SOURCE.read_bytes(), "\0".join(COMPILE_FLAGS + HEADER_CHECK_FLAGS).encode(),
                 torch.__version__.encode(), _zig_version().encode()):
        h.update(part)
        h.update(b"\0")
    return cache.cache_dir() / f"aoti-shim-{h.hexdigest()[:32]}.so"


def _clang(args: Sequence[str], cwd: str) -> None:
    proc = subprocess.run(
        [toolchain.zig_executable(), "c++", *args], capture_output=True, text=True, cwd=cwd, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"building the emulated MPS shim failed:\n{proc.stderr.strip()}")


def build() -> Path:
    """The path of the built shim library, compiling it (about a second) if it is not cached."""
    out = library_path()
    if cache.lookup(out):
        return out
    with tempfile.TemporaryDirectory(prefix="mpsk-shim-") as tmp:
        _clang([*HEADER_CHECK_FLAGS, str(SOURCE), "-o", str(Path(tmp) / "check.o")], tmp)
        tmp_out = Path(tmp) / "shim.so"
        _clang([*COMPILE_FLAGS, str(SOURCE), "-o", str(tmp_out)], tmp)
        cache.store(out, tmp_out.read_bytes())
    return out


# -- tensors across the C boundary ---------------------------------------------------------------


@functools.cache
def _libtorch() -> ctypes.CDLL:
    """libtorch_cpu, already loaded by `import torch` (this returns the same library); it holds the
    ordinary AOTI C shim (aoti_torch_*), which is not in the process's global symbol scope."""
    suffix = ".dylib" if sys.platform == "darwin" else ".so"
    lib = ctypes.CDLL(str(Path(torch.__file__).parent / "lib" / f"libtorch_cpu{suffix}"))
    lib.aoti_torch_new_tensor_handle.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p)]
    lib.aoti_torch_new_tensor_handle.restype = _INT32
    lib.aoti_torch_delete_tensor_object.argtypes = [ctypes.c_void_p]
    lib.aoti_torch_delete_tensor_object.restype = _INT32
    return lib


def _capsule(address: int) -> object:
    new = ctypes.pythonapi.PyCapsule_New
    new.argtypes, new.restype = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p], ctypes.py_object
    return new(address, None, None)


def _capsule_address(capsule: object) -> int:
    get = ctypes.pythonapi.PyCapsule_GetPointer
    get.argtypes, get.restype = [ctypes.py_object, ctypes.c_char_p], ctypes.c_void_p
    return get(capsule, None)


def borrow_tensor(handle: int | None) -> torch.Tensor:
    """The tensor an AtenTensorHandle points to, without copying or taking the caller's handle."""
    if not handle:
        raise ValueError("NULL AtenTensorHandle")
    new = ctypes.c_void_p()
    if _libtorch().aoti_torch_new_tensor_handle(handle, ctypes.byref(new)) != 0 or not new.value:
        raise RuntimeError(f"aoti_torch_new_tensor_handle failed for handle {handle:#x}")
    return torch._C._aoti.alloc_tensor_by_stealing_from_void_ptr(_capsule(new.value))


@contextmanager
def tensor_handles(*tensors: torch.Tensor) -> Iterator[list[int]]:
    """AtenTensorHandles (as ints) for `tensors`, valid inside the block, for driving the shim from
    Python the way AOTI code does (it passes handles it owns)."""
    for t in tensors:
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"tensor_handles takes tensors, got {type(t).__name__}")
    handles = [_capsule_address(c) for c in torch._C._aoti.unsafe_alloc_void_ptrs_from_tensors(list(tensors))]
    try:
        yield handles
    finally:
        for h in handles:
            _libtorch().aoti_torch_delete_tensor_object(h)


# -- the Python side of the shim -----------------------------------------------------------------


class _Runtime:
    """Handle registries and the callbacks. Handles are ids from one counter, never reused, so a
    stale or wrong-kind handle is a clear error rather than another object. As in torch's shim, a
    kernel function belongs to its library (one per name) and dies with it."""

    def __init__(self, dll: ctypes.CDLL):
        self._dll = dll
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._libraries: dict[int, ShaderLibrary] = {}
        self._kernels: dict[int, KernelFunction] = {}
        self._library_kernels: dict[int, dict[str, int]] = {}
        g = self._guarded
        self.struct = _Callbacks(
            ABI_VERSION,
            _CREATE(g(self._create_library)),
            _DELETE(g(self._delete_library)),
            _GET_KERNEL(g(self._get_kernel)),
            _START(g(lambda fn: self._kernel(fn).start_encoding())),
            _SET_TENSOR(g(lambda fn, idx, t: self._kernel(fn).set_arg_tensor(idx, borrow_tensor(t)))),
            _SET_INT(g(lambda fn, idx, value: self._kernel(fn).set_arg_int(idx, value))),
            _DISPATCH(g(self._dispatch)),
            _RUN_BLOCK(g(self._run_block)),
        )

    def _guarded(self, fn: Callable[..., None]) -> Callable[..., int]:
        """A callback that returns 0, or stores the exception's message in the shim and returns 1:
        an exception must not reach ctypes, which would print it and return garbage."""

        def callback(*args) -> int:
            try:
                fn(*args)
                return 0
            except BaseException as e:  # noqa: BLE001 - every failure becomes an error code
                message = f"{type(e).__name__}: {e}"
                self._dll.mpsk_shim_set_error(message.encode("utf-8", errors="replace"))
                return 1

        return callback

    def _library(self, handle: int) -> ShaderLibrary:
        lib = self._libraries.get(handle)
        if lib is None:
            raise ValueError(f"{handle:#x} is not a live shader library handle (never created, or deleted)")
        return lib

    def _kernel(self, handle: int) -> KernelFunction:
        fn = self._kernels.get(handle)
        if fn is None:
            raise ValueError(
                f"{handle:#x} is not a live kernel function handle (never returned by "
                f"aoti_torch_mps_get_kernel_function, or its library was deleted)"
            )
        return fn

    def _create_library(self, source: bytes, out) -> None:
        lib = ShaderLibrary(source.decode("utf-8"), backend="auto")
        with self._lock:
            handle = next(self._ids)
            self._libraries[handle] = lib
            self._library_kernels[handle] = {}
        out[0] = handle

    def _delete_library(self, handle: int) -> None:
        with self._lock:
            self._library(handle)
            del self._libraries[handle]
            for fn in self._library_kernels.pop(handle).values():
                del self._kernels[fn]

    def _get_kernel(self, library: int, name: bytes, out) -> None:
        lib = self._library(library)
        kernel_name = name.decode("utf-8")
        with self._lock:
            handle = self._library_kernels[library].get(kernel_name)
        if handle is None:
            fn = lib.get_kernel_function(kernel_name)
            with self._lock:
                handle = self._library_kernels[library].setdefault(kernel_name, next(self._ids))
                self._kernels.setdefault(handle, fn)
        out[0] = handle

    def _dispatch(self, fn: int, length, ndim: int, group) -> None:
        threads = [int(length[i]) for i in range(ndim)]
        group_size = [int(group[i]) for i in range(ndim)] if group else None
        self._kernel(fn).dispatch(threads, group_size)

    def _run_block(self, fn: int, callback: int, user_data: int | None) -> None:
        kernel = self._kernel(fn)
        kernel.run_command_block(lambda: self._dll.mpsk_shim_invoke_block(callback, fn, user_data))


_load_lock = threading.Lock()
_loaded: tuple[ctypes.CDLL, _Runtime] | None = None


_P, _SZ = ctypes.c_void_p, ctypes.c_size_t
# shim_mps.h's signatures, so that calls through the returned CDLL convert arguments correctly
# (without argtypes ctypes would pass a Python int as a 32-bit int).
_SHIM_SIGNATURES: dict[str, list] = {
    "aoti_torch_mps_create_shader_library": [ctypes.c_char_p, ctypes.POINTER(_P)],
    "aoti_torch_mps_delete_shader_library": [_P],
    "aoti_torch_mps_get_kernel_function": [_P, ctypes.c_char_p, ctypes.POINTER(_P)],
    "aoti_torch_mps_start_encoding": [_P],
    "aoti_torch_mps_set_arg_tensor": [_P, ctypes.c_uint, _P],
    "aoti_torch_mps_set_arg_int": [_P, ctypes.c_uint, ctypes.c_int64],
    "aoti_torch_mps_dispatch_single": [_P, _U64],
    "aoti_torch_mps_dispatch_single_with_group_size": [_P, _U64, _U64],
    "aoti_torch_mps_dispatch_array": [_P, ctypes.POINTER(_U64), _SZ],
    "aoti_torch_mps_dispatch_array_with_group_size": [_P, ctypes.POINTER(_U64), _SZ, ctypes.POINTER(_U64), _SZ],
    "aoti_torch_mps_run_command_block": [_P, _P, _P],
    "aoti_torch_mps_malloc": [ctypes.POINTER(_P), _SZ],
    "aoti_torch_mps_free": [_P],
    "aoti_torch_mps_memcpy": [_P, _SZ, _SZ, _SZ, _P],
    "aoti_torch_mps_copy_buffer": [_P, _P, _SZ, _SZ, _SZ],
}


def _declare(dll: ctypes.CDLL) -> None:
    for name, argtypes in _SHIM_SIGNATURES.items():
        getattr(dll, name).argtypes = argtypes
        getattr(dll, name).restype = _INT32
    dll.aoti_torch_mps_shared_callback.argtypes = [_P, _P]
    dll.aoti_torch_mps_shared_callback.restype = None
    dll.mpsk_shim_install.argtypes = [ctypes.POINTER(_Callbacks)]
    dll.mpsk_shim_install.restype = _INT32
    dll.mpsk_shim_abi_version.restype = _INT32
    dll.mpsk_shim_last_error.restype = ctypes.c_char_p
    dll.mpsk_shim_set_error.argtypes = [ctypes.c_char_p]
    dll.mpsk_shim_set_error.restype = None
    dll.mpsk_shim_invoke_block.argtypes = [ctypes.c_void_p, _U64, ctypes.c_void_p]
    dll.mpsk_shim_set_mac_faithful.argtypes = [ctypes.c_int]
    dll.mpsk_shim_set_mac_faithful.restype = None
    dll.mpsk_shim_invoke_block.restype = None


def has_native_shim() -> bool:
    """Whether this libtorch defines the MPS shim itself (macOS builds)."""
    return hasattr(_libtorch(), "aoti_torch_mps_create_shader_library")


def load() -> ctypes.CDLL:
    """Builds (once, cached on disk), loads with RTLD_GLOBAL and installs the emulated shim; later
    calls return the same library. Load it before any AOTInductor model that calls the shim."""
    global _loaded
    with _load_lock:
        if _loaded is not None:
            return _loaded[0]
        if has_native_shim():
            raise RuntimeError(
                "this libtorch implements the MPS shim itself (a macOS build); the emulated shim is for "
                "builds without it and would shadow the real one"
            )
        dll = ctypes.CDLL(str(build()), mode=ctypes.RTLD_GLOBAL)
        _declare(dll)
        if dll.mpsk_shim_abi_version() != ABI_VERSION:
            raise RuntimeError(f"emulated MPS shim at {dll._name} has ABI {dll.mpsk_shim_abi_version()}, "
                               f"expected {ABI_VERSION}")
        runtime = _Runtime(dll)
        if dll.mpsk_shim_install(ctypes.byref(runtime.struct)) != 0:
            raise RuntimeError("the emulated MPS shim rejected its callbacks (ABI version mismatch)")
        # C++ static destructors of a loaded model (its shader-library deleters) run after Python
        # has shut down; uninstalling first makes those calls return an error instead of entering
        # a finalized interpreter.
        atexit.register(dll.mpsk_shim_install, None)
        _loaded = (dll, runtime)
        return dll


@contextmanager
def mac_faithful() -> Iterator[None]:
    """Inside the block, run_command_block succeeds whatever the calls inside it returned, as on a Mac."""
    dll = load()
    dll.mpsk_shim_set_mac_faithful(1)
    try:
        yield
    finally:
        dll.mpsk_shim_set_mac_faithful(0)


def last_error() -> str:
    """The message of the last failed shim call on this thread."""
    return load().mpsk_shim_last_error().decode("utf-8", errors="replace")
