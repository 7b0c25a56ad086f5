"""One Inductor lowering per mpsk op: a `MetalKernel` built from the op's own plan builder, or a fallback.

Each lowering decides from its inputs' device whether the Metal kernel can run (MPS, or CPU
under `config.emulate_metal`, as `ops.common.metal_backend` decides for the eager op). Where it
cannot, the op has usually been decomposed into ATen math before lowering (lowerings.decompose);
what still arrives, and a case below that cannot be planned at compile time, becomes the
ordinary extern call of the custom op (`make_fallback`-style), whose eager implementation
launches the kernel itself.

Falls back (documented limits):
- the C++ wrapper on CPU tensors when the emulated MPS shim cannot be loaded (a libtorch that has
  the real shim, i.e. macOS, whose shim cannot launch on CPU tensors);
- a head dim that is symbolic (the attention kernels are specialized on it);
- a statically empty tensor, and a float attention mask of another dtype than q.

Symbolic sizes the attention builder compares (Sq with decode_max_q; Skv with split_kv_above
in decode) take the branch of their size hint; the choice is guarded and the builder gets a
stand-in symbol whose comparison with that bound returns the guarded answer (`_DecidedSize`),
so the builder stays the single source of launch logic.
"""

from __future__ import annotations

import itertools
import math

import sympy
import torch
from torch._inductor import ir, lowering
from torch._inductor.lowering import fallback_handler, register_lowering
from torch._inductor.virtualized import V

from .. import config
from ..aoti import emulated_shim
from ..ops import attention as attention_mod
from ..ops import norm as norm_mod
from ..ops import softmax as softmax_mod
from ..ops.common import METAL_DTYPES, capped
from ..ops.launch import fit_to_pipelines
from ..ops.rope import rope_plan
from .metal_kernel import MetalKernel


def _backend(x) -> str | None:
    """Shader backend for a lowered op on `x`, mirroring ops.common.metal_backend at compile time.

    Emulated kernels in C++ code call the aoti_torch_mps_* functions of the emulated shim, which
    is loaded here, before the compiled module that resolves them against it.
    """
    device, dtype = x.get_device(), x.get_dtype()
    if device is None or dtype not in METAL_DTYPES:
        return None
    if device.type == "mps":
        return "mps"
    if device.type != "cpu" or not config.emulate_metal:
        return None
    if V.graph.cpp_wrapper:
        try:
            emulated_shim.load()
        except RuntimeError:
            return None
    return "cpu"


def _int(value) -> int | None:
    """`value` as an int when it is static, else None."""
    value = V.graph.sizevars.simplify(sympy.sympify(value))
    return int(value) if value.is_Integer else None


def _static(value):
    """`value` as an int when it is static, else as the graph's size expression."""
    static = _int(value)
    return value if static is None else static


def _empty(sizes) -> bool:
    return any(_int(s) == 0 for s in sizes)


def _contiguous(x):
    return ir.ExternKernel.require_contiguous(x)


def _aligned(x, cols) -> bool:
    """Whether 4-wide loads suit contiguous rows of `x`: a known multiple-of-4 row length and an offset
    of a multiple of 4 in a buffer Inductor allocated (a graph input's base alignment is unknown)."""
    if not isinstance(cols, int) or cols % 4 or x.get_name() in V.graph.graph_inputs:
        return False
    offset = _int(x.get_layout().offset)
    return offset is not None and offset % 4 == 0


def _contiguous_layout(x, size) -> ir.FixedLayout:
    return ir.FixedLayout(x.get_device(), x.get_dtype(), list(size), ir.FlexibleLayout.contiguous_strides(size))


def _broadcast_strides(t, target) -> tuple:
    """Strides reading `t` broadcast to `target` in place: 0 along broadcast dimensions (as expand)."""
    size, stride = t.get_size(), t.get_stride()
    lead = len(target) - len(size)
    return tuple(
        0 if i < lead or V.graph.sizevars.statically_known_equals(size[i - lead], 1) else stride[i - lead]
        for i in range(len(target))
    )


def _kernel(op, x, size, inputs, tensors, plan, backend, substitutions=None):
    node = MetalKernel(_contiguous_layout(x, size), inputs, plan=plan, tensors=tensors, backend=backend, op=op,
                       substitutions=substitutions)
    return ir.TensorBox.create(node)


def _norm(kind, op, input, weight, bias, eps, weight_offset):
    backend = _backend(input)
    size = input.get_size()
    if backend is None or _empty(size):
        return None
    cols = _static(size[-1])  # symbolic: the plan takes the looped form
    x = _contiguous(input)
    affine = [t for t in (weight, bias) if t is not None]
    inputs = [x, *(_contiguous(t) for t in affine)]
    tensors = {"x": (0, None)}
    if weight is not None:
        tensors["weight"] = (1, None)
    if bias is not None:
        tensors["bias"] = (len(inputs) - 1, None)
    plan = fit_to_pipelines(lambda cap: norm_mod.norm_plan(
        kind, input.get_dtype(), sympy.Mul(*size[:-1]), cols, cols, cols, has_weight=weight is not None,
        has_bias=bias is not None, eps=eps, weight_offset=weight_offset, vector_ok=_aligned(x, cols),
        policy=capped(config.norm, cap),
    ), backend)
    return _kernel(op, input, size, inputs, tensors, plan, backend)


def _softmax(op, input, dim, log):
    backend = _backend(input)
    size = input.get_size()
    if backend is None or not size or _empty(size):
        return None
    d = dim % len(size)
    cols = _static(size[d])  # symbolic: the plan takes the online form
    outer, inner = sympy.Mul(*size[:d]), sympy.Mul(*size[d + 1:])
    x = _contiguous(input)
    strides = (cols * inner, inner, 1)
    vector_ok = V.graph.sizevars.statically_known_equals(inner, 1) and _aligned(x, cols)
    plan = fit_to_pipelines(lambda cap: softmax_mod.softmax_plan(
        input.get_dtype(), outer, cols, inner, strides, strides, log=log, vector_ok=vector_ok,
        policy=capped(config.softmax, cap)), backend)
    return _kernel(op, input, size, [x], {"x": (0, None)}, plan, backend)


def _rope(op, x, cos, sin, interleaved):
    backend = _backend(x)
    size = x.get_size()
    if backend is None or _empty(size):
        return None
    rot = cos.get_size()[-1]
    full = (*size[:3], rot)
    xc, cc, sc = (_contiguous(t) for t in (x, cos, sin))
    plan = rope_plan(x.get_dtype(), tuple(size), rot, tuple(xc.get_stride()), _broadcast_strides(cc, full),
                     _broadcast_strides(sc, full), interleaved=interleaved, policy=config.rope)
    return _kernel(op, x, size, [xc, cc, sc], {"x": (0, None), "cos": (1, None), "sin": (2, None)}, plan, backend)


class _DecidedSize(sympy.Symbol):
    """Stand-in for a symbolic size whose comparison with one bound the lowering has decided and
    guarded: `<=` / `>` against that bound give the decided Python bool, so the plan builder's own
    branch runs unchanged; every other use is an ordinary size symbol, mapped back when printed."""

    def __new__(cls, name: str, bound: int, above: bool):
        obj = super().__new__(cls, name, integer=True, positive=True)
        obj._bound, obj._above = bound, above
        return obj

    def __le__(self, other):
        return (not self._above) if other == self._bound else super().__le__(other)

    def __gt__(self, other):
        return self._above if other == self._bound else super().__gt__(other)


_stand_in_ids = itertools.count()  # unique names: sympy caches symbols by name


def _decided(expr, bound: int, name: str, subs: dict):
    """`expr` as the plan builder should see it: an int when static; else a `_DecidedSize` taking
    the branch of `expr > bound` that its hint takes, with that choice guarded (recompiling if a
    later call falls on the other side). `subs` collects stand-in -> graph expression."""
    if _int(expr) is not None:
        return _int(expr)
    sizevars = V.graph.sizevars
    above = sizevars.guarding_hint_or_throw(expr) > bound
    sizevars.evaluate_expr(sympy.Gt(expr, bound) if above else sympy.Le(expr, bound))
    stand_in = _DecidedSize(f"mpsk_{name}_{next(_stand_in_ids)}", bound, above)
    subs[stand_in] = expr
    return stand_in


def _attention(op, q, k, v, attn_mask, scale, is_causal, window):
    backend = _backend(q)
    B, Hq, Sq, D = q.get_size()
    Hkv, Skv, Dv = k.get_size()[1], k.get_size()[2], v.get_size()[3]
    D, Dv = _int(D), _int(Dv)
    out_size = [B, Hq, Sq, Dv]
    if backend is None or D is None or Dv is None or D == 0 or _empty([B, Hq, Sq, Skv, Dv]):
        return None
    mask_kind, mask_view = attention_mod.MASK_NONE, None
    if attn_mask is not None:
        if attn_mask.get_dtype() == torch.bool:  # read as bytes, as the eager op binds it
            mask_kind, mask_view = attention_mod.MASK_BOOL, torch.uint8
        elif attn_mask.get_dtype() == q.get_dtype():
            mask_kind = attention_mod.MASK_ADD
        else:
            return None
    policy = config.attention
    subs: dict = {}
    sq = _decided(Sq, policy.decode_max_q, "sq", subs)
    decode = sq <= policy.decode_max_q
    skv = _decided(Skv, policy.split_kv_above, "skv", subs) if decode else Skv
    shape = tuple(_static(n) for n in (B, Hq, Hkv)) + (sq, skv, D, Dv)
    qc, kc, vc = (_contiguous(t) for t in (q, k, v))
    inputs, tensors = [qc, kc, vc], {"q": (0, None), "k": (1, None), "v": (2, None)}
    mask_strides = None
    if attn_mask is not None:
        mc = _contiguous(attn_mask)
        inputs.append(mc)
        tensors["mask"] = (3, mask_view)
        mask_strides = _broadcast_strides(mc, (B, Hq, Sq, Skv))
    plan = attention_mod.attention_plan(
        q.get_dtype(), shape, tuple(tuple(t.get_stride()[:3]) for t in (qc, kc, vc)),
        mask_kind=mask_kind, mask_strides=mask_strides, scale=1.0 / math.sqrt(D) if scale is None else scale,
        is_causal=is_causal, window=window, policy=policy,
    )
    return _kernel(op, q, out_size, inputs, tensors, plan, backend, subs)


def _lowering(op, build):
    """Registers `build(*args, **kwargs) -> TensorBox | None` for `op`; None means the op's own call."""
    fallback = fallback_handler(op, add_to_fallback_set=False)

    def lower(*args, **kwargs):
        out = build(*args, **kwargs)
        return fallback(*args, **kwargs) if out is None else out

    register_lowering(op, type_promotion_kind=None)(lower)
    _registered.append(op)


_installed = False
_registered: list = []


def install() -> None:
    """Registers the lowerings in Inductor's table (idempotent). They apply to every Inductor
    compilation that meets an mpsk op, and pick Metal or the fallback per call from the devices."""
    global _installed
    if _installed:
        return
    mpsk = torch.ops.mpsk
    _lowering(mpsk.rms_norm.default,
              lambda input, weight, eps, weight_offset=0.0: _norm(
                  "rms_norm", mpsk.rms_norm.default, input, weight, None, eps, weight_offset))
    _lowering(mpsk.layer_norm.default,
              lambda input, weight, bias, eps: _norm(
                  "layer_norm", mpsk.layer_norm.default, input, weight, bias, eps, 0.0))
    _lowering(mpsk.softmax.default,
              lambda input, dim, log=False: _softmax(mpsk.softmax.default, input, dim, log))
    _lowering(mpsk.rope.default,
              lambda x, cos, sin, interleaved=False: _rope(mpsk.rope.default, x, cos, sin, interleaved))
    _lowering(mpsk.attention.default,
              lambda q, k, v, attn_mask=None, scale=None, is_causal=False, window=-1: _attention(
                  mpsk.attention.default, q, k, v, attn_mask, scale, is_causal, window))
    _installed = True


def uninstall() -> None:
    """Removes the lowerings again: the mpsk ops go back to Inductor's default op call."""
    global _installed
    for op in _registered:
        lowering.lowerings.pop(op, None)
    _registered.clear()
    _installed = False
