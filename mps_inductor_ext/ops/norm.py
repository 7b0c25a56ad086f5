"""mpsk::rms_norm and mpsk::layer_norm: last-dimension normalization on norm.metal; and their fused
residual forms mpsk::add_rms_norm and mpsk::add_layer_norm, which return (norm(h), h) for
h = x + residual from one kernel (a pre-norm transformer's residual add, whose sum is both the
next norm's input and the next residual)."""

from __future__ import annotations

import functools

import torch

from .. import config
from ..config import NormPolicy
from ..shaders import load_source
from .common import (
    METAL_DTYPES,
    as_rows,
    capped,
    check_eps,
    check_finite,
    check_like,
    check_tensor,
    new_buffer,
    threads_per_row,
    tuned_runtime,
)
from .launch import IntArg, KernelLaunch, LaunchPlan, Size, TensorArg, ceil_div, fit_to_pipelines, specialize
from .operands import Operand, OpLaunch, rows_vector_ok, run_launch

NORM_KINDS = ("rms_norm", "layer_norm", "add_rms_norm", "add_layer_norm")
MAX_REGISTER_LOADS = 4  # loads per thread kept in registers before the looped form takes over


@functools.cache
def _template() -> str:
    return load_source("reduce") + load_source("norm")


def norm_plan(
    kind: str,
    dtype: torch.dtype,
    rows: int,
    cols: int | Size,
    x_row_stride: int,
    out_row_stride: int,
    *,
    has_weight: bool,
    has_bias: bool,
    eps: float,
    weight_offset: float = 0.0,
    vector_ok: bool,
    policy: NormPolicy,
    residual_row_stride: int | Size | None = None,
) -> LaunchPlan:
    """One threadgroup per row; the row is held in registers when it fits in a few loads.

    A symbolic `cols` (known only at run time) takes the looped form, which serves any length.
    With `residual_row_stride` (the fused add_* kinds) the kernel normalizes h = x + residual and
    writes h as tensor "h", laid out as "out".
    """
    if kind not in NORM_KINDS:
        raise ValueError(f"unknown norm kind {kind!r}; one of {NORM_KINDS}")
    fused = kind.startswith("add_")
    if fused != (residual_row_stride is not None):
        raise ValueError(f"{kind}: residual_row_stride is given exactly for the add_* kinds")
    vec = 4 if vector_ok and policy.vector_width == 4 else 1
    threads = threads_per_row(kind, dtype, cols, vec, policy)
    per_pass = threads * vec
    nreg = ceil_div(cols, per_pass) if isinstance(cols, int) and cols <= per_pass * MAX_REGISTER_LOADS else 0
    source = specialize(
        _template(),
        {"DTYPE": METAL_DTYPES[dtype], "VEC": vec, "NREG": nreg, "HAS_WEIGHT": has_weight, "HAS_BIAS": has_bias,
         "EPS": float(eps), "WEIGHT_OFFSET": float(weight_offset), "ADD_RESIDUAL": fused},
        index_extents=(cols + per_pass,),
    )
    args = [TensorArg("out"), *([TensorArg("h")] if fused else []), TensorArg("x")]
    args += [TensorArg("residual")] if fused else []
    args += [TensorArg("weight")] if has_weight else []
    args += [TensorArg("bias")] if has_bias else []
    args += [IntArg(cols), IntArg(x_row_stride), IntArg(out_row_stride)]
    args += [IntArg(residual_row_stride)] if fused else []
    launch = KernelLaunch(source, f"{kind}_{METAL_DTYPES[dtype]}", tuple(args), (rows * threads,), (threads,))
    return LaunchPlan((launch,))


def norm_launch(kind: str, x: Operand, weight: Operand | None, bias: Operand | None, eps: float,
                weight_offset: float, runtime: str, residual: Operand | None = None) -> OpLaunch:
    """The launch of one norm call over `x` viewed as (rows, cols) with unit column stride (rows may be
    symbolic, cols too: the looped form), fitted to the kernel's thread limit, for the eager op and
    the lowering alike. The output is contiguous (rows, cols); so is h, the second output of the
    fused add_* kinds (`residual` given, viewed as `x` is)."""
    rows, cols = x.shape
    if residual is not None and tuple(residual.shape) != tuple(x.shape):
        raise ValueError(f"{kind}: residual has shape {residual.shape} but x has {x.shape}")
    vector_ok = rows_vector_ok(x) and (residual is None or rows_vector_ok(residual))
    plan = fit_to_pipelines(lambda cap: norm_plan(
        kind, x.dtype, rows, cols, x.stride[0], cols, has_weight=weight is not None, has_bias=bias is not None,
        eps=eps, weight_offset=weight_offset, vector_ok=vector_ok, policy=capped(config.norm, cap),
        residual_row_stride=None if residual is None else residual.stride[0],
    ), runtime)
    operands = {"x": x, "residual": residual, "weight": weight, "bias": bias}
    outputs = ("out", "h") if residual is not None else ("out",)
    return OpLaunch(plan, {k: v for k, v in operands.items() if v is not None}, outputs)


def rms_norm_launch(x: Operand, weight: Operand | None, eps: float, weight_offset: float, runtime: str) -> OpLaunch:
    return norm_launch("rms_norm", x, weight, None, eps, weight_offset, runtime)


def layer_norm_launch(x: Operand, weight: Operand | None, bias: Operand | None, eps: float,
                      runtime: str) -> OpLaunch:
    return norm_launch("layer_norm", x, weight, bias, eps, 0.0, runtime)


def add_rms_norm_launch(x: Operand, residual: Operand, weight: Operand | None, eps: float, weight_offset: float,
                        runtime: str) -> OpLaunch:
    return norm_launch("add_rms_norm", x, weight, None, eps, weight_offset, runtime, residual)


def add_layer_norm_launch(x: Operand, residual: Operand, weight: Operand | None, bias: Operand | None, eps: float,
                          runtime: str) -> OpLaunch:
    return norm_launch("add_layer_norm", x, weight, bias, eps, 0.0, runtime, residual)


def _run_metal(kind, x, weight, bias, eps, weight_offset, runtime, residual=None):
    """The norm (`residual` None) or its fused form's (y, h), on Metal."""
    rows_in = as_rows(x)
    outs = [new_buffer(rows_in.shape, x.dtype, x.device) for _ in range(1 if residual is None else 2)]
    if rows_in.numel():
        res = None if residual is None else Operand.of(as_rows(residual))
        launch = norm_launch(kind, Operand.of(rows_in), *(None if t is None else Operand.of(t.contiguous())
                                                          for t in (weight, bias)), eps, weight_offset, runtime, res)
        run_launch(launch, outs, runtime)
    views = [o.view(x.shape) for o in outs]
    return views[0] if residual is None else tuple(views)


def _check_affine(op: str, x: torch.Tensor, name: str, t: torch.Tensor | None) -> None:
    if t is None:
        return
    check_tensor(op, name, t, dim=1)
    check_like(op, name, t, x, "input")
    if t.shape[0] != x.shape[-1]:
        raise ValueError(f"mpsk.{op}: {name} has {t.shape[0]} elements but input's last dimension is {x.shape[-1]}")


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def rms_norm_reference(x, weight, eps, weight_offset=0.0):
    """y = x * rsqrt(mean(x^2) + eps) * (weight + weight_offset), in fp32."""
    xf = x.to(_acc_dtype(x.dtype))
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    if weight is not None:
        y = y * (weight.to(xf.dtype) + weight_offset)
    return y.to(x.dtype)


def _check_rms_norm(input, weight, eps, weight_offset) -> tuple[float, float]:
    check_tensor("rms_norm", "input", input, min_dim=1)
    _check_affine("rms_norm", input, "weight", weight)
    return check_eps("rms_norm", eps), check_finite("rms_norm", weight_offset, "weight_offset")


@torch.library.custom_op("mpsk::rms_norm", mutates_args=())
def rms_norm(input: torch.Tensor, weight: torch.Tensor | None, eps: float, weight_offset: float = 0.0) -> torch.Tensor:
    eps, weight_offset = _check_rms_norm(input, weight, eps, weight_offset)
    runtime = tuned_runtime("rms_norm", (input, weight, eps, weight_offset))
    if runtime is None:
        return rms_norm_reference(input, weight, eps, weight_offset)
    return _run_metal("rms_norm", input, weight, None, eps, weight_offset, runtime)


@rms_norm.register_fake
def _(input, weight, eps, weight_offset=0.0):
    _check_rms_norm(input, weight, eps, weight_offset)
    return torch.empty_like(input, memory_format=torch.contiguous_format)


def _rms_norm_setup(ctx, inputs, output):
    input, weight, eps, weight_offset = inputs
    ctx.save_for_backward(input, weight)
    ctx.eps, ctx.weight_offset = eps, weight_offset


def _rms_norm_grads(x, weight, eps, weight_offset, grad, weight_grad: bool):
    """(dx, dweight or None) of y = rms_norm(x) for the output gradient `grad` (ATen's formula, in fp32)."""
    acc = _acc_dtype(x.dtype)
    xf, g = x.to(acc), grad.to(acc)
    r = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    xhat = xf * r
    scale = None if weight is None else weight.to(acc) + weight_offset
    gx = g if scale is None else g * scale
    dx = r * (gx - xhat * (gx * xhat).mean(-1, keepdim=True))
    dw = None
    if weight is not None and weight_grad:
        dw = (g * xhat).reshape(-1, x.shape[-1]).sum(0).to(weight.dtype)
    return dx.to(x.dtype), dw


def _rms_norm_backward(ctx, grad):
    x, weight = ctx.saved_tensors
    dx, dw = _rms_norm_grads(x, weight, ctx.eps, ctx.weight_offset, grad, ctx.needs_input_grad[1])
    return dx, dw, None, None


rms_norm.register_autograd(_rms_norm_backward, setup_context=_rms_norm_setup)


def _check_layer_norm(input, weight, bias, eps) -> float:
    check_tensor("layer_norm", "input", input, min_dim=1)
    _check_affine("layer_norm", input, "weight", weight)
    _check_affine("layer_norm", input, "bias", bias)
    return check_eps("layer_norm", eps)


def layer_norm_reference(input, weight, bias, eps):
    """F.layer_norm over the last dimension."""
    return torch.nn.functional.layer_norm(input, (input.shape[-1],), weight, bias, eps)


@torch.library.custom_op("mpsk::layer_norm", mutates_args=())
def layer_norm(input: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float) -> torch.Tensor:
    eps = _check_layer_norm(input, weight, bias, eps)
    runtime = tuned_runtime("layer_norm", (input, weight, bias, eps))
    if runtime is None:
        return layer_norm_reference(input, weight, bias, eps)
    return _run_metal("layer_norm", input, weight, bias, eps, 0.0, runtime)


@layer_norm.register_fake
def _(input, weight, bias, eps):
    _check_layer_norm(input, weight, bias, eps)
    return torch.empty_like(input, memory_format=torch.contiguous_format)


def _layer_norm_setup(ctx, inputs, output):
    input, weight, bias, eps = inputs
    ctx.save_for_backward(input, weight, bias)
    ctx.eps = eps


def _layer_norm_grads(x, weight, bias, eps, grad, mask: list[bool]):
    """(dx, dweight, dbias) of F.layer_norm, each None where `mask` (or a missing affine) says."""
    shape = (x.shape[-1],)
    _, mean, rstd = torch.ops.aten.native_layer_norm(x, shape, weight, bias, eps)
    mask = [mask[0], weight is not None and mask[1], bias is not None and mask[2]]
    return torch.ops.aten.native_layer_norm_backward(grad, x, shape, mean, rstd, weight, bias, mask)


def _layer_norm_backward(ctx, grad):
    x, weight, bias = ctx.saved_tensors
    dx, dw, db = _layer_norm_grads(x, weight, bias, ctx.eps, grad, list(ctx.needs_input_grad[:3]))
    return dx, dw, db, None


layer_norm.register_autograd(_layer_norm_backward, setup_context=_layer_norm_setup)


# ---------------------------------------------------------------- the fused residual forms


def _check_residual(op: str, x, residual) -> None:
    check_tensor(op, "x", x, min_dim=1)
    check_tensor(op, "residual", residual)
    check_like(op, "residual", residual, x, "x")
    if residual.shape != x.shape:
        raise ValueError(f"mpsk.{op}: residual has shape {tuple(residual.shape)} but x has {tuple(x.shape)}; "
                         f"they must match")


def _check_add_rms_norm(x, residual, weight, eps, weight_offset) -> tuple[float, float]:
    _check_residual("add_rms_norm", x, residual)
    _check_affine("add_rms_norm", x, "weight", weight)
    return check_eps("add_rms_norm", eps), check_finite("add_rms_norm", weight_offset, "weight_offset")


def _two_like(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return tuple(torch.empty_like(x, memory_format=torch.contiguous_format) for _ in range(2))


def add_rms_norm_reference(x, residual, weight, eps, weight_offset=0.0):
    """(rms_norm(h), h) for h = x + residual computed in x's dtype, as the graph it replaces does."""
    h = x + residual
    return rms_norm_reference(h, weight, eps, weight_offset), h


@torch.library.custom_op("mpsk::add_rms_norm", mutates_args=())
def add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor | None, eps: float,
                 weight_offset: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    eps, weight_offset = _check_add_rms_norm(x, residual, weight, eps, weight_offset)
    runtime = tuned_runtime("add_rms_norm", (x, residual, weight, eps, weight_offset))
    if runtime is None:
        return tuple(t.contiguous() for t in add_rms_norm_reference(x, residual, weight, eps, weight_offset))
    return _run_metal("add_rms_norm", x, weight, None, eps, weight_offset, runtime, residual)


@add_rms_norm.register_fake
def _(x, residual, weight, eps, weight_offset=0.0):
    _check_add_rms_norm(x, residual, weight, eps, weight_offset)
    return _two_like(x)


def _add_rms_norm_setup(ctx, inputs, output):
    """Saves h (the second output): the norm's backward needs h, not x."""
    _, _, weight, eps, weight_offset = inputs
    ctx.save_for_backward(output[1], weight)
    ctx.eps, ctx.weight_offset = eps, weight_offset


def _add_rms_norm_backward(ctx, grad_y, grad_h):
    h, weight = ctx.saved_tensors
    dh, dw = _rms_norm_grads(h, weight, ctx.eps, ctx.weight_offset, grad_y, ctx.needs_input_grad[2])
    if grad_h is not None:
        dh = dh + grad_h
    return dh, dh, dw, None, None


add_rms_norm.register_autograd(_add_rms_norm_backward, setup_context=_add_rms_norm_setup)


def _check_add_layer_norm(x, residual, weight, bias, eps) -> float:
    _check_residual("add_layer_norm", x, residual)
    _check_affine("add_layer_norm", x, "weight", weight)
    _check_affine("add_layer_norm", x, "bias", bias)
    return check_eps("add_layer_norm", eps)


def add_layer_norm_reference(x, residual, weight, bias, eps):
    """(F.layer_norm(h), h) for h = x + residual computed in x's dtype."""
    h = x + residual
    return layer_norm_reference(h, weight, bias, eps), h


@torch.library.custom_op("mpsk::add_layer_norm", mutates_args=())
def add_layer_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                   eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    eps = _check_add_layer_norm(x, residual, weight, bias, eps)
    runtime = tuned_runtime("add_layer_norm", (x, residual, weight, bias, eps))
    if runtime is None:
        return tuple(t.contiguous() for t in add_layer_norm_reference(x, residual, weight, bias, eps))
    return _run_metal("add_layer_norm", x, weight, bias, eps, 0.0, runtime, residual)


@add_layer_norm.register_fake
def _(x, residual, weight, bias, eps):
    _check_add_layer_norm(x, residual, weight, bias, eps)
    return _two_like(x)


def _add_layer_norm_setup(ctx, inputs, output):
    _, _, weight, bias, eps = inputs
    ctx.save_for_backward(output[1], weight, bias)
    ctx.eps = eps


def _add_layer_norm_backward(ctx, grad_y, grad_h):
    h, weight, bias = ctx.saved_tensors
    dh, dw, db = _layer_norm_grads(h, weight, bias, ctx.eps, grad_y, [True, *ctx.needs_input_grad[2:4]])
    if grad_h is not None:
        dh = dh + grad_h
    return dh, dh, dw, db, None


add_layer_norm.register_autograd(_add_layer_norm_backward, setup_context=_add_layer_norm_setup)
