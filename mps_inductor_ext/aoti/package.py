"""torch.export + AOTInductor with the mpsk patterns and lowerings: `.pt2` packages that keep the kernels.

`aoti_compile_and_package` exports the model (or takes an ExportedProgram) and compiles it with
Inductor's AOT path under the same graph pass as the backend (the pre-grad hook, which on this
path sees the exported training-IR graph, hence the patterns' aten spellings) and with the mpsk
lowerings installed, so the generated C++ launches the Metal kernels through the AOTI MPS shim.

`aoti_load_package` loads such a package. A package whose kernels run on the CPU emulator
(made with `config.emulate_metal` on CPU tensors) calls `aoti_torch_mps_*`, which only macOS's
libtorch defines; the emulated shim is loaded first so those calls resolve against it. A package
compiled for the `mps` device (on a Mac, or on the emulated mps device) also calls the ATen
fallbacks of c_shim_mps.h, which the emulated device supplies (emulated_mps.c_shim).

Those emulated shims call back into Python from inside the model's C++. libtorch's runner holds
the GIL while it waits for a free model instance, so a second thread calling the same loaded
package would wait there holding the GIL that the first needs for its callbacks: a deadlock. Such
a package's calls are therefore serialized by a lock taken before entering C++ (waiting on it
releases the GIL); one package runs one call at a time, as with libtorch's default of one instance.
"""

from __future__ import annotations

import json
import os
import threading
import zipfile
from collections.abc import Callable
from typing import Any

import torch

from .. import lowerings
from ..passes import MpskGraphPass, RecordAtenGraph, check_patterns_setting
from . import emulated_shim

SHIM_SYMBOL = b"aoti_torch_mps_create_shader_library"


def _check_path(package_path: object) -> str | None:
    if package_path is None:
        return None
    if not isinstance(package_path, (str, os.PathLike)):
        raise TypeError(f"mpsk: package_path must be a str or os.PathLike, got {type(package_path).__name__}")
    path = os.fspath(package_path)
    if not path.endswith(".pt2"):
        raise ValueError(f"mpsk: package_path must end in .pt2, got {path!r}")
    return path


def _export(model: object, example_args: object, dynamic_shapes: object) -> torch.export.ExportedProgram:
    if isinstance(model, torch.export.ExportedProgram):
        if dynamic_shapes is not None:
            raise ValueError("mpsk: dynamic_shapes applies when exporting a module; an ExportedProgram already "
                             "carries its own")
        return model
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"mpsk: expected a torch.nn.Module or torch.export.ExportedProgram, got {type(model).__name__}")
    if not isinstance(example_args, tuple):
        raise TypeError(f"mpsk: example_args must be a tuple of the model's positional inputs, got "
                        f"{type(example_args).__name__}")
    return torch.export.export(model, example_args, dynamic_shapes=dynamic_shapes)


def aoti_compile_and_package(
    model_or_exported_program: torch.nn.Module | torch.export.ExportedProgram,
    example_args: tuple[Any, ...] | None = None,
    package_path: str | os.PathLike | None = None,
    dynamic_shapes: Any = None,
) -> str:
    """Exports (unless given an ExportedProgram) and AOT-compiles with the mpsk patterns and Metal
    kernel lowerings; returns the `.pt2` package's path.

    `example_args` are the module's positional inputs (unused for an ExportedProgram, which has its
    own); `dynamic_shapes` is torch.export's, e.g. `({1: torch.export.Dim("seq")},)`.
    """
    path = _check_path(package_path)
    ep = _export(model_or_exported_program, example_args, dynamic_shapes)
    check_patterns_setting()
    lowerings.install()
    options = {"pre_grad_custom_pass": MpskGraphPass(), "post_grad_custom_post_pass": RecordAtenGraph()}
    return torch._inductor.aoti_compile_and_package(ep, package_path=path, inductor_configs=options)


def needs_emulated_shim(package_path: str | os.PathLike) -> bool:
    """Whether a package's model library calls the AOTI MPS shim (so on a libtorch without one, the
    emulated shim must be loaded before it)."""
    with zipfile.ZipFile(package_path) as archive:
        return any(name.endswith(".so") and SHIM_SYMBOL in archive.read(name) for name in archive.namelist())


def package_devices(package_path: str | os.PathLike) -> set[str]:
    """The devices a package's models were compiled for (AOTI_DEVICE_KEY of their metadata)."""
    with zipfile.ZipFile(package_path) as archive:
        names = [n for n in archive.namelist() if n.endswith("_metadata.json")]
        return {json.loads(archive.read(n)).get("AOTI_DEVICE_KEY", "") for n in names} - {""}


def aoti_load_package(package_path: str | os.PathLike) -> Callable[..., Any]:
    """Loads a `.pt2` package as a callable model (pytree inputs and outputs, as exported).

    A package compiled for `mps` runs on a Mac, or here on the emulated mps device, whose libtorch
    lacks what a Mac's has for it (the MPS shim, the ATen fallback shim, the mps model runner)."""
    from ..emulated_mps import c_shim, installed

    if not isinstance(package_path, (str, os.PathLike)):
        raise TypeError(f"mpsk: package_path must be a str or os.PathLike, got {type(package_path).__name__}")
    path = os.fspath(package_path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"mpsk: no package at {path!r}")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"mpsk: {path!r} is not a .pt2 package (not a zip archive)")
    for_mps = "mps" in package_devices(path)
    if for_mps and not torch.backends.mps.is_built():
        raise RuntimeError(
            f"mpsk: {path!r} was compiled for the mps device, and this torch has no MPS backend; on a machine "
            f"without a Mac's GPU, run it on the emulated mps device: mps_inductor_ext.emulate_mps_device() "
            f"(or MPSK_EMULATE_MPS=1) first"
        )
    calls_python = False
    if needs_emulated_shim(path) and not emulated_shim.has_native_shim():
        emulated_shim.load()
        calls_python = True
    if for_mps and installed():
        c_shim.load()
        calls_python = True
    model = torch._inductor.aoti_load_package(path)
    return SerializedModel(model) if calls_python else model


class SerializedModel:
    """A loaded package whose calls (which call back into Python) run one at a time: see the module
    docstring. Everything else is the loaded model's."""

    def __init__(self, model: Any):
        self._model = model
        self._lock = threading.Lock()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return self._model(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

