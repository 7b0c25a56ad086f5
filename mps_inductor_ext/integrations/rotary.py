"""Rotary embedding application on mpsk::rope.

transformers applies RoPE in a module-level function, `apply_rotary_pos_emb(q, k, cos, sin,
unsqueeze_dim=1)`, which each attention forward looks up in its modeling module's globals at call
time. That name is the only place to intercept it without copying modeling code, so patching
installs a wrapper there (one per modeling module, shared by the patched models of that module
and removed when the last of them is unpatched). The wrapper calls the op only while a patched
model's attention forward is running (`_scope`), so another, unpatched model built from the same
modeling module keeps the original function's results.

Which rotation the function computes is not read from its name: a probe with random q, k, cos and
sin compares it with the op's reference math, half-split (Llama, NeoX) or interleaved (GPT-J), and
with a partial rotary table (NeoX rotates the first cos.shape[-1] features); a call the probe did
not cover goes to the original function.
"""

from __future__ import annotations

import inspect
import sys
import types
from dataclasses import dataclass

import torch

from ..ops.common import METAL_DTYPES
from ..ops.rope import rope_reference
from .swap import original_forward

FUNCTION = "apply_rotary_pos_emb"
PROBE_TOL = 1e-5


class _Scope:
    """How many patched attention forwards are running (nested calls count up). A plain attribute,
    not a thread-local, so that Dynamo traces it when a patched model is compiled; an unpatched
    model running in another thread at the same moment would take the op too."""

    depth = 0


_scope = _Scope()


@dataclass(frozen=True)
class RopeSpec:
    interleaved: bool
    partial: bool  # the function also rotates only the first cos.shape[-1] features

    def describe(self) -> str:
        form = "interleaved" if self.interleaved else "rotate_half"
        return f"mpsk.rope on q and k ({form}{', partial rotary' if self.partial else ''})"


@dataclass
class _Installed:
    module: types.ModuleType
    original: object
    wrapper: object
    users: int


_installed: dict[str, _Installed] = {}


def _matches(fn, rot: int, dim: int, interleaved: bool) -> bool:
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 3, 5, dim, generator=gen), torch.randn(2, 1, 5, dim, generator=gen)
    cos, sin = torch.randn(2, 5, rot, generator=gen), torch.randn(2, 5, rot, generator=gen)
    try:
        with torch.no_grad():
            got = fn(q, k, cos, sin)
    except Exception:
        return False
    if not (isinstance(got, tuple) and len(got) == 2 and all(isinstance(t, torch.Tensor) for t in got)):
        return False
    c, s = cos.unsqueeze(1), sin.unsqueeze(1)
    want = (rope_reference(q, c, s, interleaved), rope_reference(k, c, s, interleaved))
    return all(g.shape == w.shape and torch.allclose(g, w, rtol=PROBE_TOL, atol=PROBE_TOL)
               for g, w in zip(got, want, strict=True))


def hub_kernel_function(fn: object) -> object:
    """The plain function under a `kernels` hub wrapper, else `fn` itself.

    From transformers 5.25 (with `kernels` installed), `@use_kernel_forward_from_hub("rotary_pos_emb")`
    turns each modeling file's apply_rotary_pos_emb into an instance of a generated `nn.Module` class
    named `Func`, whose forward calls the decorated function (a closure variable named `func`) unless
    `kernelize` selected a hub kernel. Its signature is (*args, **kwargs), so the function it wraps is
    what tells the parameters; calling either computes the same.
    """
    if not isinstance(fn, torch.nn.Module) or type(fn).__name__ != "Func":
        return fn
    try:
        inner = inspect.getclosurevars(type(fn).forward).nonlocals.get("func")
    except (TypeError, ValueError):
        return fn
    return inner if inspect.isfunction(inner) else fn


def recognize(fn) -> RopeSpec | str:
    """The rotation `fn(q, k, cos, sin)` computes, or why it is left alone."""
    fn = hub_kernel_function(fn)
    try:
        params = list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return "its signature cannot be read"
    if params[:4] != ["q", "k", "cos", "sin"]:
        return f"its parameters are {params}, not (q, k, cos, sin, ...)"
    for interleaved in (False, True):
        if _matches(fn, 8, 8, interleaved):
            return RopeSpec(interleaved, partial=_matches(fn, 4, 8, interleaved))
    return "computes neither rotate_half nor interleaved RoPE on a probe"


def _wrapper(original, spec: RopeSpec):
    def apply_rotary_pos_emb(q, k, cos, sin, *args, **kwargs):
        if _scope.depth and not args and not kwargs and takes(q, k, cos, sin, spec):
            cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
            return (torch.ops.mpsk.rope(q, cos, sin, spec.interleaved),
                    torch.ops.mpsk.rope(k, cos, sin, spec.interleaved))
        return original(q, k, cos, sin, *args, **kwargs)

    apply_rotary_pos_emb.__wrapped__ = original
    apply_rotary_pos_emb.__doc__ = original.__doc__
    return apply_rotary_pos_emb


def takes(q, k, cos, sin, spec: RopeSpec) -> bool:
    """q, k (B, H, S, D) and cos, sin (B, S, R) of one Metal dtype, with R = D unless partial rotary was probed."""
    tensors = (q, k, cos, sin)
    if not all(isinstance(t, torch.Tensor) for t in tensors) or q.dtype not in METAL_DTYPES:
        return False
    if any(t.dtype != q.dtype or t.device != q.device for t in tensors):
        return False
    if q.dim() != 4 or k.dim() != 4 or cos.dim() != 3 or sin.shape != cos.shape:
        return False
    rot = cos.shape[-1]
    full = rot == q.shape[-1] == k.shape[-1]
    return rot % 2 == 0 and (full or (spec.partial and rot <= min(q.shape[-1], k.shape[-1])))


def callers(model: torch.nn.Module, modeling: types.ModuleType) -> list[tuple[str, torch.nn.Module]]:
    """The modules of `model` whose class forward (in `modeling`) calls apply_rotary_pos_emb by name."""
    found = []
    for name, module in model.named_modules():
        cls = type(module)
        if cls.__module__ != modeling.__name__:
            continue
        code = getattr(inspect.unwrap(cls.forward), "__code__", None)
        if code is not None and FUNCTION in code.co_names:
            found.append((name, module))
    return found


def modeling_modules(model: torch.nn.Module) -> list[types.ModuleType]:
    """The modules defining `model`'s classes that hold an apply_rotary_pos_emb function."""
    seen: dict[str, types.ModuleType] = {}
    for module in model.modules():
        mod = sys.modules.get(type(module).__module__)
        if mod is not None and callable(getattr(mod, FUNCTION, None)):
            seen.setdefault(mod.__name__, mod)
    return list(seen.values())


def original_function(modeling: types.ModuleType):
    installed = _installed.get(modeling.__name__)
    return installed.original if installed else getattr(modeling, FUNCTION)


def install(modeling: types.ModuleType, spec: RopeSpec) -> None:
    """Puts the wrapper in place (once per modeling module) and counts one more user."""
    installed = _installed.get(modeling.__name__)
    if installed is None:
        original = getattr(modeling, FUNCTION)
        installed = _Installed(modeling, original, _wrapper(original, spec), 0)
        setattr(modeling, FUNCTION, installed.wrapper)
        _installed[modeling.__name__] = installed
    installed.users += 1


def uninstall(modeling_name: str) -> None:
    """One user fewer; the last one puts the original function back."""
    installed = _installed[modeling_name]
    installed.users -= 1
    if installed.users == 0:
        if getattr(installed.module, FUNCTION) is installed.wrapper:
            setattr(installed.module, FUNCTION, installed.original)
        del _installed[modeling_name]


def scoped_forward(self: torch.nn.Module, *args, **kwargs):
    """An attention forward that lets the wrapper use the op while it runs."""
    _scope.depth += 1
    try:
        return original_forward(self)(*args, **kwargs)
    finally:
        _scope.depth -= 1
