"""The `mpsk` torch.compile backend: Inductor with the mpsk graph pass and the mpsk ops' lowerings installed."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch._inductor import config as inductor_config
from torch._inductor.compile_fx import compile_fx

from . import attempts, diagnostics, lowerings
from .ops.common import metal_runtime
from .passes import MpskGraphPass, RecordAtenGraph, check_patterns_setting


class MetalKernelsNotUsedWarning(UserWarning):
    """The model runs where no Metal kernel does (not MPS, and no emulation): plain Inductor code."""


_warned = False


def _inductor_options(mode: str | None, options: dict[str, Any] | None) -> dict[str, Any]:
    patches: dict[str, Any] = {}
    if mode not in (None, "default"):
        patches.update(torch._inductor.list_mode_options(mode))
    if options is None:
        return patches
    if not isinstance(options, dict):
        raise TypeError(f"mpsk: options must be a dict of Inductor settings, got {type(options).__name__}")
    known = inductor_config.get_config_copy()
    unknown = [k for k in options if k not in known]
    if unknown:
        raise ValueError(f"mpsk: unknown Inductor option(s) {unknown}; see torch._inductor.config")
    if "pre_grad_custom_pass" in options:
        raise ValueError("mpsk: pre_grad_custom_pass is where the mpsk patterns run; it cannot be overridden")
    patches.update(options)
    return patches


def _on_metal(example_inputs: Sequence[object]) -> bool:
    devices = {t.device for t in example_inputs if isinstance(t, torch.Tensor)} or {torch.device("cpu")}
    return any(metal_runtime(d) for d in devices)


def mpsk_backend(gm: torch.fx.GraphModule, example_inputs: Sequence[object], **kwargs: Any):
    """torch.compile(model, backend="mpsk", mode=..., options={...Inductor settings...})."""
    global _warned
    mode, options = kwargs.pop("mode", None), kwargs.pop("options", None)
    if kwargs:
        raise TypeError(f"mpsk: unexpected argument(s) {sorted(kwargs)}")
    check_patterns_setting()
    patches = _inductor_options(mode, options)
    if not _on_metal(example_inputs) and not _warned:
        _warned = True
        warnings.warn(
            "mpsk: no input is on MPS and mps_inductor_ext.config.emulate_metal is off, so the Metal kernels "
            "are not in use; the model compiles to ordinary Inductor code",
            MetalKernelsNotUsedWarning,
            stacklevel=2,
        )
    diagnostics.record_graph(gm, "dynamo")
    lowerings.install()
    patches["pre_grad_custom_pass"] = MpskGraphPass()
    patches.setdefault("post_grad_custom_post_pass", RecordAtenGraph())
    # A hit in AOTAutograd's cache skips the pre-grad passes, so counters and diagnostics
    # would miss that compilation; Inductor's FX graph cache (keyed by the pass's uuid) stays on.
    with torch._functorch.config.patch(enable_autograd_cache=False), attempts.attempt():
        return compile_fx(gm, example_inputs, config_patches=patches)


def register() -> None:
    """Makes "mpsk" a Dynamo backend name, unless the installed entry point already provides it."""
    from importlib.metadata import entry_points

    from torch._dynamo.backends.registry import _COMPILER_FNS, register_backend

    if "mpsk" in _COMPILER_FNS:
        return
    if any(ep.name == "mpsk" for ep in entry_points(group="torch_dynamo_backends")):
        return  # Dynamo loads it from there; registering here too would be a duplicate
    register_backend(compiler_fn=mpsk_backend, name="mpsk")
