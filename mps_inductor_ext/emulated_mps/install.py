"""Installs the emulated `mps` device into this process: the C++ half (device.cpp) and torch's
Python-level MPS entry points, which the CPU build of torch answers with "no MPS".

After `emulate_mps_device()`, `device="mps"` works: tensors live in host memory, eager ATen ops
run their CPU kernels (eager numerics are the CPU's), and every Metal compile that torch or
Inductor asks for (`torch.mps.compile_shader`, Inductor's `compile_mps_shader`) is served by this
project's Metal emulator, so a compiled program's Metal kernels, Inductor's and ours, run on it.
It is for testing the program a Mac would run on machines without one; it is not a GPU and its
times are not GPU times.
"""

from __future__ import annotations

import ctypes
import threading
import warnings

import torch

from ..shaders.emulator import binding, headers
from . import build, launches, shader_library

# Apple's published GPU core counts (the largest configuration of each chip), which
# torch.backends.mps.get_core_count() reports on a Mac and Inductor's split reductions read.
MACS: dict[str, int] = {
    "M1": 8, "M1 Pro": 16, "M1 Max": 32, "M1 Ultra": 64,
    "M2": 10, "M2 Pro": 19, "M2 Max": 38, "M2 Ultra": 76,
    "M3": 10, "M3 Pro": 18, "M3 Max": 40,
    "M4": 10, "M4 Pro": 20, "M4 Max": 40,
}
DEFAULT_MAC = "M1"
# macOS versions the device can report. torch's eager MPS code branches on it (SDPA on
# non-contiguous inputs takes _scaled_dot_product_attention_math_for_mps from macOS 15). The Metal
# emulator compiles MSL 3.1 (macOS 14's language) whichever is reported.
MACOS_VERSIONS = ((14, 0), (15, 0))
DEFAULT_MACOS = (15, 0)

_lock = threading.Lock()
_installed: dict[str, object] = {}


def installed() -> bool:
    """Whether this process has the emulated mps device."""
    return bool(_installed)


def mac() -> str | None:
    """The Mac the emulated device reports itself as, or None if it is not installed."""
    return _installed.get("mac")  # type: ignore[return-value]


def _real_mps() -> bool:
    # The build flag only: asking torch._C._mps_is_available() would make libtorch read its MPS
    # hooks now, before the emulated device's are registered (it reads them once).
    return bool(torch._C._has_mps)


def _patch_python(mac_name: str, macos: tuple[int, int]) -> None:
    cores = MACS[mac_name]
    lib = _installed["lib"]
    c = torch._C
    c._has_mps = True
    c._mps_is_available = lambda: True
    c._mps_is_on_macos_or_newer = lambda major, minor: (int(major), int(minor)) <= macos
    c._mps_get_core_count = lambda: cores
    c._mps_get_name = lambda: f"Apple {mac_name} (emulated)"
    c._mps_deviceSynchronize = lambda: None  # every launch has finished when it returns
    c._mps_emptyCache = lambda: None
    c._mps_currentAllocatedMemory = lambda: int(lib.mpsk_emulated_mps_allocated())
    c._mps_driverAllocatedMemory = lambda: int(lib.mpsk_emulated_mps_allocated())
    c._mps_compileShader = shader_library.compile_mps_shader
    torch.mps.compile_shader = _checked_compile_shader(torch.mps.compile_shader)
    # Random ops on mps tensors run on the CPU, drawing from the CPU's generator: it is the mps one too.
    c._mps_get_default_generator = lambda: torch.default_generator
    # torch.backends.mps caches what it read from torch._C.
    for name in ("is_available", "is_macos_or_newer", "is_macos13_or_newer", "get_name", "get_core_count"):
        fn = getattr(torch.backends.mps, name, None)
        if hasattr(fn, "cache_clear"):
            fn.cache_clear()
    binding.HOST_MEMORY_DEVICES.add("mps")


def _checked_compile_shader(compile_shader):
    """torch.mps.compile_shader with the emulator's include check first: torch's header helper
    inlines any file an absolute or `..` path names before the source reaches the emulator."""

    def checked(source: str):
        if isinstance(source, str):
            headers.check_includes(source)
        return compile_shader(source)

    checked.__doc__ = compile_shader.__doc__
    return checked


def emulate_mps_device(mac: str = DEFAULT_MAC, macos: tuple[int, int] = DEFAULT_MACOS) -> None:
    """Makes `device="mps"` work on this machine, which must have no MPS device of its own.

    `mac` names the Mac whose GPU core count torch.backends.mps.get_core_count() reports (one of
    MACS); `macos` the macOS version torch.backends.mps.is_macos_or_newer() answers for (one of
    MACOS_VERSIONS). Installing twice with the same settings is a no-op; the device cannot be
    removed again. Needs g++ (the C++ half is built against the installed libtorch on first use,
    then cached).
    """
    if not isinstance(mac, str) or mac not in MACS:
        raise ValueError(f"mac must be one of {sorted(MACS)}, got {mac!r}")
    if not isinstance(macos, tuple) or tuple(macos) not in MACOS_VERSIONS:
        raise ValueError(f"macos must be one of {MACOS_VERSIONS}, got {macos!r}")
    with _lock:
        if _installed:
            if (_installed["mac"], _installed["macos"]) != (mac, macos):
                raise RuntimeError(
                    f"the emulated mps device is already installed as an Apple {_installed['mac']} on macOS "
                    f"{_installed['macos']}; it cannot be changed to {mac} on {macos} in the same process"
                )
            return
        if _real_mps():
            raise RuntimeError(
                "this torch is built with its own MPS backend (torch.backends.mps.is_built() is True); the "
                "emulated mps device is only for the CPU build of torch on machines without one"
            )
        path = build.build()
        torch.ops.load_library(str(path))
        lib = ctypes.CDLL(str(path))
        lib.mpsk_emulated_mps_allocated.restype = ctypes.c_int64
        lib.mpsk_emulated_mps_hooks_active.restype = ctypes.c_int
        lib.mpsk_emulated_mps_set_allocator()
        lib.mpsk_emulated_mps_set_macos(*macos)
        launches.attach(lib)
        _installed.update(lib=lib, mac=mac, macos=macos, path=path)
        _patch_python(mac, macos)
    if not hooks_active():
        warnings.warn(
            "the emulated mps device is installed, but libtorch had already read its MPS hooks (something called "
            "torch.backends.mps.is_available() first), so torch.accelerator and autograd (training) do not see "
            "the device; install it first thing, or set MPSK_EMULATE_MPS=1 before importing mps_inductor_ext",
            RuntimeWarning,
            stacklevel=2,
        )


def hooks_active() -> bool:
    """Whether libtorch uses the emulated device's MPS hooks (it reads them once, at first use), which
    the accelerator API and the autograd engine need."""
    if not _installed:
        return False
    return bool(_installed["lib"].mpsk_emulated_mps_hooks_active())
