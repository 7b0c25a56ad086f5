"""`explain(fn, *args, **kwargs)`: one run under torch.compile, recorded."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch._dynamo.backends.common import aot_autograd
from torch._dynamo.backends.debugging import boxed_nop

from .collector import HAZARD_DTYPES, Collector, dtype_message
from .report import Hazard, Report

MPSK = "mpsk"
CAPTURE = "capture (eager, through AOTAutograd)"


def _capture_backend() -> Callable:
    """Runs graphs eagerly after AOTAutograd, recording the ATen graphs the mpsk passes would see."""
    from . import record_graph

    def record_aten(gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Callable:
        record_graph(gm, "aten")
        return boxed_nop(gm, example_inputs)

    return aot_autograd(fw_compiler=record_aten, bw_compiler=record_aten)


def resolve_backend(backend: str | Callable | None) -> tuple[Callable, str]:
    """None: "mpsk" when registered, else the capture backend, which can also be asked for by its name
    (it records the aten graphs before Inductor's decompositions). Other names must be registered backends."""
    from torch._dynamo.backends.registry import list_backends, lookup_backend

    names = list_backends(exclude_tags=())
    if backend in ("capture", CAPTURE):
        return _capture_backend(), CAPTURE
    if backend is None:
        return (lookup_backend(MPSK), MPSK) if MPSK in names else (_capture_backend(), CAPTURE)
    if isinstance(backend, str):
        if backend not in names:
            raise ValueError(f"unknown torch.compile backend {backend!r}; registered: {names}")
        return lookup_backend(backend), backend
    if callable(backend):
        return backend, getattr(backend, "__name__", type(backend).__name__)
    raise TypeError(f"backend must be None, a backend name or a callable, got {type(backend).__name__}")


def describe(fn: Callable) -> str:
    if isinstance(fn, torch.nn.Module):
        return f"{type(fn).__name__} (nn.Module)"
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__
    code = getattr(fn, "__code__", None)
    return f"{name} ({code.co_filename}:{code.co_firstlineno})" if code else name


def _direct_hazards(fn: Callable, args: tuple, kwargs: dict) -> list[Hazard]:
    """float64 / complex tensors in the arguments and the module's state, found without Dynamo
    (which sees only what the traced code touches)."""
    found: list[Hazard] = []

    def visit(where: str, name: str, value: Any) -> None:
        if isinstance(value, torch.Tensor):
            kind = HAZARD_DTYPES.get(value.dtype)
            if kind:
                found.append(Hazard(kind=kind, where=where, name=name, dtype=str(value.dtype),
                                    message=dtype_message(kind)))
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                visit(where, f"{name}[{i}]", v)
        elif isinstance(value, dict):
            for k, v in value.items():
                visit(where, f"{name}[{k!r}]", v)

    target = fn.forward if isinstance(fn, torch.nn.Module) else fn
    try:
        bound = inspect.signature(target).bind(*args, **kwargs).arguments
    except (TypeError, ValueError):  # no signature, or a mismatch the call itself will report
        bound = {f"args[{i}]": a for i, a in enumerate(args)} | kwargs
    for name, value in bound.items():
        visit("input", name, value)
    module = fn if isinstance(fn, torch.nn.Module) else getattr(fn, "__self__", None)
    if isinstance(module, torch.nn.Module):
        for name, p in module.named_parameters():
            visit("parameter", name, p)
        for name, b in module.named_buffers():
            visit("buffer", name, b)
    return found


def explain(fn: Callable, *args: Any, backend: str | Callable | None = None, **kwargs: Any) -> Report:
    """Runs ``fn(*args, **kwargs)`` once under ``torch.compile`` and reports what happened.

    ``backend``: None (the default) uses ``"mpsk"`` when it is registered, else a capture backend
    that runs the graphs eagerly after AOTAutograd; the report names the one used. (``backend`` is
    therefore not passed on to ``fn``.) Like ``torch._dynamo.explain``, this resets Dynamo before
    and after, so other compiled functions in the process recompile on their next call.
    """
    if not callable(fn):
        raise TypeError(f"explain() needs a function or nn.Module to run, got {type(fn).__name__}")
    if isinstance(fn, torch._dynamo.eval_frame.OptimizedModule) or hasattr(fn, "_torchdynamo_orig_callable"):
        raise TypeError("explain() takes the original function or module, not one already wrapped by torch.compile")
    inner, label = resolve_backend(backend)
    from . import record_graph

    def recording_backend(gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Callable:
        if label != MPSK:  # the mpsk backend records its graphs itself
            record_graph(gm, "dynamo")
        return inner(gm, example_inputs)

    torch._dynamo.reset()
    collector = Collector(backend=label, target=describe(fn))
    try:
        # A cached compilation skips the passes that report replacements and aten graphs.
        with collector, torch._inductor.config.patch(fx_graph_cache=False):
            torch.compile(fn, backend=recording_backend)(*args, **kwargs)
    finally:
        torch._dynamo.reset()
    for h in _direct_hazards(fn, args, kwargs):
        collector.add_hazard(h)
    return collector.report()
