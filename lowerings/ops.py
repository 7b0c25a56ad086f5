"""One Inductor lowering per op family: an `MpskKernel` rendering the op's own launch, or a fallback.

Each lowering describes its inputs as `Operand`s (contiguous buffers, sizes in the graph's
expressions) and calls the family's launch function, the one the eager op calls on tensors, so
launch logic is written once. Whether a kernel can run is `ops.common.metal_runtime`'s answer,
as for the eager op. Where none can, the op has usually been decomposed into ATen math before
lowering (lowerings.decompose); what still arrives, and a case below that cannot be planned at
compile time, becomes the ordinary extern call of the custom op (`make_fallback`-style), whose
eager implementation launches the kernel itself.

Falls back (documented limits):
- the C++ wrapper on CPU tensors when the emulated MPS shim cannot be loaded (a libtorch that has
  the real shim, i.e. macOS, whose shim cannot launch on CPU tensors);
- a head dim that is symbolic (the attention kernels are specialized on it);
- a statically empty tensor, and a float attention mask of another dtype than q.

Sizes the attention launch compares with a bound (Sq with decode_max_q; Skv with split_kv_above in
decode), and quantized_linear's row count (matvec_max_rows: matvec or matmul), are decided at
compile time (lowerings.decided_size).
"""

from __future__ import annotations

import sympy
import torch
from torch._inductor import ir, lowering
from torch._inductor.lowering import fallback_handler, register_lowering
from torch._inductor.virtualized import V

from .. import config
from ..aoti import emulated_shim
from ..families import FAMILIES
from ..ops import attention as attention_mod
from ..ops import norm as norm_mod
from ..ops import quantized as quantized_mod
from ..ops import rope as rope_mod
from ..ops import softmax as softmax_mod
from ..ops.common import metal_runtime
from ..ops.operands import Operand, OpLaunch
from .decided_size import decide, static_int
from .mpsk_kernel import MpskKernel, MpskMultiKernel


def _runtime(x) -> str | None:
    """Where a lowered op on `x` runs its kernels (ops.common.metal_runtime), or None.

    Emulated kernels in C++ code call the aoti_torch_mps_* functions of the emulated shim, which
    is loaded here, before the compiled module that resolves them against it.
    """
    device = x.get_device()
    runtime = None if device is None else metal_runtime(device, x.get_dtype())
    if runtime == "cpu" and V.graph.cpp_wrapper:
        try:
            emulated_shim.load()
        except RuntimeError:
            return None
    return runtime


def _static(value):
    """`value` as an int when it is static, else as the graph's size expression."""
    static = static_int(value)
    return value if static is None else static


def _empty(sizes) -> bool:
    return any(static_int(s) == 0 for s in sizes)


def _operand(x, shape=None) -> Operand:
    """`x` made contiguous, as an operand of `shape` (default: its own). Its start is known aligned
    when Inductor allocated the buffer at a multiple-of-4 offset (a graph input's base is unknown)."""
    x = ir.ExternKernel.require_contiguous(x)
    shape = tuple(_static(n) for n in (x.get_size() if shape is None else shape))
    offset = static_int(x.get_layout().offset)
    aligned = x.get_name() not in V.graph.graph_inputs and offset is not None and offset % 4 == 0
    return Operand(x, x.get_dtype(), shape, tuple(ir.FlexibleLayout.contiguous_strides(shape)), aligned)


def _shared(x):
    """`x` computed into a buffer of its own before an op copies it contiguous: a value every layer
    reads, such as the static-cache mask HF builds once per forward, is then computed once, where
    Inductor would otherwise recompute a cheap pointwise value into each reader's copy (one launch
    per layer)."""
    if isinstance(x, ir.TensorBox):
        x.realize()
    return x


def _strided(x) -> Operand:
    """`x` as it lies, for a kernel that reads its strides: realized and its layout fixed, never
    copied (a view of a buffer stays a view). Its start is not assumed aligned."""
    x = ir.ExternKernel.realize_input(x)
    if ir.is_storage_and_layout(x):
        x.freeze_layout()
    shape = tuple(_static(n) for n in x.get_size())
    return Operand(x, x.get_dtype(), shape, tuple(_static(s) for s in x.get_stride()), False)


def _kernel(op, like, size, launch: OpLaunch, runtime, substitutions=None, writes=()):
    layout = ir.FixedLayout(like.get_device(), like.get_dtype(), list(size),
                            ir.FlexibleLayout.contiguous_strides(size))
    return ir.TensorBox.create(MpskKernel(layout, launch, runtime=runtime, op=op, substitutions=substitutions,
                                          writes=writes))


def _new_output(like):
    """A contiguous buffer shaped like `like` for a kernel's second output: allocated, never computed
    (the kernel node that writes it declares the write)."""
    size = like.get_size()
    return lowering.empty_strided(size, ir.FlexibleLayout.contiguous_strides(size), dtype=like.get_dtype(),
                                  device=like.get_device())


def _kernels(op, like, size, launch: OpLaunch, runtime, substitutions=None) -> tuple:
    """The outputs of an op with several (launch.outputs, each of `size` like `like`), one launch."""
    layout = ir.FixedLayout(like.get_device(), like.get_dtype(), list(size), ir.FlexibleLayout.contiguous_strides(size))
    node = MpskMultiKernel(like.get_device(), [layout] * len(launch.outputs), launch, runtime=runtime, op=op,
                           substitutions=substitutions)
    return tuple(ir.TensorBox.create(out) for out in node.outputs)


def _rows(input) -> Operand:
    size = input.get_size()
    return _operand(input, (sympy.Mul(*size[:-1]), size[-1]))  # a symbolic row length: the looped form


def _norm_operands(input, weight, bias):
    return _rows(input), *(None if t is None else _operand(t) for t in (weight, bias))


def lower_rms_norm(input, weight, eps, weight_offset=0.0):
    runtime = _runtime(input)
    if runtime is None or _empty(input.get_size()):
        return None
    x, w, _ = _norm_operands(input, weight, None)
    launch = norm_mod.rms_norm_launch(x, w, eps, weight_offset, runtime)
    return _kernel(torch.ops.mpsk.rms_norm.default, input, input.get_size(), launch, runtime)


def lower_layer_norm(input, weight, bias, eps):
    runtime = _runtime(input)
    if runtime is None or _empty(input.get_size()):
        return None
    launch = norm_mod.layer_norm_launch(*_norm_operands(input, weight, bias), eps, runtime)
    return _kernel(torch.ops.mpsk.layer_norm.default, input, input.get_size(), launch, runtime)


def lower_add_rms_norm(x, residual, weight, eps, weight_offset=0.0):
    runtime = _runtime(x)
    if runtime is None or _empty(x.get_size()):
        return None
    xo, w, _ = _norm_operands(x, weight, None)
    launch = norm_mod.add_rms_norm_launch(xo, _rows(residual), w, eps, weight_offset, runtime)
    return _kernels(torch.ops.mpsk.add_rms_norm.default, x, x.get_size(), launch, runtime)


def lower_add_layer_norm(x, residual, weight, bias, eps):
    runtime = _runtime(x)
    if runtime is None or _empty(x.get_size()):
        return None
    xo, w, b = _norm_operands(x, weight, bias)
    launch = norm_mod.add_layer_norm_launch(xo, _rows(residual), w, b, eps, runtime)
    return _kernels(torch.ops.mpsk.add_layer_norm.default, x, x.get_size(), launch, runtime)


def lower_softmax(input, dim, log=False):
    runtime = _runtime(input)
    size = input.get_size()
    if runtime is None or not size or _empty(size):
        return None
    d = dim % len(size)
    x = _operand(input, (sympy.Mul(*size[:d]), size[d], sympy.Mul(*size[d + 1:])))
    return _kernel(torch.ops.mpsk.softmax.default, input, size, softmax_mod.softmax_launch(x, log, runtime), runtime)


def lower_rope(x, cos, sin, interleaved=False):
    runtime = _runtime(x)
    if runtime is None or _empty(x.get_size()):
        return None
    launch = rope_mod.rope_launch(_strided(x), _strided(cos), _strided(sin), interleaved, runtime)
    return _kernel(torch.ops.mpsk.rope.default, x, x.get_size(), launch, runtime)


def lower_rope_qk(q, k, cos, sin, interleaved=False):
    runtime = _runtime(q)
    if runtime is None or _empty(q.get_size()) or _empty(k.get_size()):
        return None
    k_out = _new_output(k)
    out = ir.ExternKernel.realize_input(k_out)
    launch = rope_mod.rope_qk_launch(*(_strided(t) for t in (q, k, cos, sin)), _strided(out), interleaved, runtime)
    q_out = _kernel(torch.ops.mpsk.rope_qk.default, q, q.get_size(), launch, runtime, writes=("k_out",))
    return q_out, k_out


def lower_attention(q, k, v, attn_mask=None, scale=None, is_causal=False, window=-1, softcap=0.0):
    runtime = _runtime(q)
    B, Hq, Sq, D = q.get_size()
    Skv, Dv = k.get_size()[2], v.get_size()[3]
    D, Dv = static_int(D), static_int(Dv)
    if runtime is None or D is None or Dv is None or D == 0 or _empty([B, Hq, Sq, Skv, Dv]):
        return None
    if attn_mask is not None and attention_mod.mask_kind(attn_mask.get_dtype(), q.get_dtype()) is None:
        return None
    policy, subs = config.attention, {}
    sq = decide(Sq, policy.decode_max_q, "sq", subs)
    skv = decide(Skv, policy.split_kv_above, "skv", subs) if sq <= policy.decode_max_q else Skv
    qo = _operand(q, (B, Hq, sq, D))
    ko, vo = _operand(k, (B, k.get_size()[1], skv, D)), _operand(v, (B, v.get_size()[1], skv, Dv))
    mask = None if attn_mask is None else _operand(_shared(attn_mask))
    launch = attention_mod.attention_launch(qo, ko, vo, mask, scale, is_causal, window, runtime, softcap)
    return _kernel(torch.ops.mpsk.attention.default, q, [B, Hq, Sq, Dv], launch, runtime, subs)


def lower_quantized_linear(x, w_packed, scales, biases, group_size, bits, bias=None):
    runtime = _runtime(x)
    size, n = x.get_size(), w_packed.get_size()[0]
    if runtime is None or _empty([*size[:-1], n]):
        return None
    subs = {}
    rows = decide(sympy.Mul(*size[:-1]), config.quantized.matvec_max_rows, "rows", subs)
    weights = (_operand(t) for t in (w_packed, scales, biases))
    launch = quantized_mod.quantized_linear_launch(_operand(x, (rows, size[-1])), *weights, group_size, bits,
                                                   None if bias is None else _operand(bias), runtime)
    return _kernel(torch.ops.mpsk.quantized_linear.default, x, [*size[:-1], n], launch, runtime, subs)


def _register(op, build) -> None:
    """Registers `build(*args, **kwargs) -> TensorBox | None` for `op`; None means the op's own call."""
    fallback = fallback_handler(op, add_to_fallback_set=False)

    def lower(*args, **kwargs):
        out = build(*args, **kwargs)
        return fallback(*args, **kwargs) if out is None else out

    register_lowering(op, type_promotion_kind=None)(lower)
    _registered.append(op)


_registered: list = []


def install() -> None:
    """Registers every family's lowering in Inductor's table (idempotent). They apply to every
    Inductor compilation that meets an mpsk op, and pick Metal or the fallback per call."""
    if _registered:
        return
    for family in FAMILIES:
        _register(family.custom_op, family.resolve("lowering"))


def uninstall() -> None:
    """Removes the lowerings again: the mpsk ops go back to Inductor's default op call."""
    for op in _registered:
        lowering.lowerings.pop(op, None)
    _registered.clear()
