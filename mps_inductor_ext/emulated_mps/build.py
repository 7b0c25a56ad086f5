"""Builds the emulated `mps` device (device.cpp) with the machine's g++ against the installed libtorch.

It links against libtorch's C++ API, so it needs the compiler libtorch was built with (g++ and
libstdc++, with torch's `_GLIBCXX_USE_CXX11_ABI`); zig's clang, which links libc++, cannot. A
build takes about fifteen seconds; the library is cached beside the emulator's (cache.cache_dir())
under a key of the source, the flags, torch's version and the compiler's version.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from ..shaders.emulator import cache

SOURCE = Path(__file__).with_name("device.cpp")
TORCH_DIR = Path(torch.__file__).parent


def _flags() -> tuple[str, ...]:
    return (
        "-std=c++20",
        "-O1",
        "-fPIC",
        "-shared",
        "-fvisibility=hidden",
        f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
        "-isystem", str(TORCH_DIR / "include"),
        "-isystem", str(TORCH_DIR / "include" / "torch" / "csrc" / "api" / "include"),
        "-L", str(TORCH_DIR / "lib"),
        f"-Wl,-rpath,{TORCH_DIR / 'lib'}",
        "-lc10",
        "-ltorch_cpu",
    )


def compiler() -> str:
    """The C++ compiler: $CXX, else g++; an error naming what to install if there is none."""
    cxx = os.environ.get("CXX") or "g++"
    path = shutil.which(cxx)
    if path is None:
        raise RuntimeError(
            f"the emulated mps device is built with a C++ compiler against libtorch, and {cxx!r} was not "
            f"found; install g++ (Debian: apt install g++) or set CXX"
        )
    return path


@functools.cache
def _compiler_version(cxx: str) -> str:
    return subprocess.run([cxx, "--version"], capture_output=True, text=True, check=False).stdout.strip()


def cached_path(name: str, source: bytes) -> Path:
    """Where a library named `name` built from `source` is cached: keyed by the source, the flags,
    torch's version and the compiler's version."""
    cxx = compiler()
    h = hashlib.sha256()
    for part in (source, "\0".join(_flags()).encode(), torch.__version__.encode(), _compiler_version(cxx).encode()):
        h.update(part)
        h.update(b"\0")
    return cache.cache_dir() / f"{name}-{h.hexdigest()[:32]}.so"


def compile_cached(name: str, source: str, what: str) -> Path:
    """The path of the library built from C++ `source` against libtorch, compiling it if it is not cached."""
    if not sys.platform.startswith("linux"):
        raise RuntimeError(f"{what} is built for Linux only, not {sys.platform}")
    out = cached_path(name, source.encode())
    if cache.lookup(out):
        return out
    flags = _flags()
    with tempfile.TemporaryDirectory(prefix=f"mpsk-{name}-") as tmp:
        src, tmp_out = Path(tmp) / f"{name}.cpp", Path(tmp) / f"{name}.so"
        src.write_text(source)
        # Sources before libraries: the link flags (from index 5 on) must follow the object.
        proc = subprocess.run([compiler(), *flags[:5], str(src), *flags[5:], "-o", str(tmp_out)],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"building {what} failed:\n{proc.stderr.strip()[-4000:]}")
        cache.store(out, tmp_out.read_bytes())
    return out


def library_path() -> Path:
    return cached_path("emulated-mps", SOURCE.read_bytes())


def build() -> Path:
    """The built device library's path, compiling it first (some fifteen seconds) if it is not cached."""
    return compile_cached("emulated-mps", SOURCE.read_text(), "the emulated mps device")
