"""mpsk::rms_norm and mpsk::layer_norm: last-dimension normalization on norm.metal."""

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
) -> LaunchPlan:
    """One threadgroup per row; the row is held in registers when it fits in a few loads.

    A symbolic `cols` (known only at run time) takes the looped form, which serves any length.
    """
    if kind not in ("rms_norm", "layer_norm"):
        raise ValueError(f"unknown norm kind {kind!r}")
    vec = 4 if vector_ok and policy.vector_width == 4 else 1
    threads = threads_per_row(kind, dtype, cols, vec, policy)
    per_pass = threads * vec
    nreg = ceil_div(cols, per_pass) if isinstance(cols, int) and cols <= per_pass * MAX_REGISTER_LOADS else 0
    source = specialize(
        _template(),
        {"DTYPE": METAL_DTYPES[dtype], "VEC": vec, "NREG": nreg, "HAS_WEIGHT": has_weight, "HAS_BIAS": has_bias,
         "EPS": float(eps), "WEIGHT_OFFSET": float(weight_offset)},
        index_extents=(cols + per_pass,),
    )
    args = [TensorArg("out"), TensorArg("x")]
    args += [TensorArg("weight")] if has_weight else []
    args += [TensorArg("bias")] if has_bias else []
    args += [IntArg(cols), IntArg(x_row_stride), IntArg(out_row_stride)]
    launch = KernelLaunch(source, f"{kind}_{METAL_DTYPES[dtype]}", tuple(args), (rows * threads,), (threads,))
    return LaunchPlan((launch,))


def norm_launch(kind: str, x: Operand, weight: Operand | None, bias: Operand | None, eps: float,
                weight_offset: float, runtime: str) -> OpLaunch:
    """The launch of one norm call over `x` viewed as (rows, cols) with unit column stride (rows may be
    symbolic, cols too: the looped form), fitted to the kernel's thread limit, for the eager op and
    the lowering alike. The output is contiguous (rows, cols)."""
    rows, cols = x.shape
    plan = fit_to_pipelines(lambda cap: norm_plan(
        kind, x.dtype, rows, cols, x.stride[0], cols, has_weight=weight is not None, has_bias=bias is not None,
        eps=eps, weight_offset=weight_offset, vector_ok=rows_vector_ok(x), policy=capped(config.norm, cap),
    ), runtime)
    operands = {"x": x, "weight": weight, "bias": bias}
    return OpLaunch(plan, {k: v for k, v in operands.items() if v is not None})


def rms_norm_launch(x: Operand, weight: Operand | None, eps: float, weight_offset: float, runtime: str) -> OpLaunch:
    return norm_launch("rms_norm", x, weight, None, eps, weight_offset, runtime)


def layer_norm_launch(x: Operand, weight: Operand | None, bias: Operand | None, eps: float,
                      runtime: str) -> OpLaunch:
    return norm_launch("layer_norm", x, weight, bias, eps, 0.0, runtime)


def _run_metal(kind, x, weight, bias, eps, weight_offset, runtime) -> torch.Tensor:
    rows_in = as_rows(x)
    out = new_buffer(rows_in.shape, x.dtype, x.device)
    if out.numel() == 0:
        return out.view(x.shape)
    launch = norm_launch(kind, Operand.of(rows_in), *(None if t is None else Operand.of(t.contiguous())
                                                      for t in (weight, bias)), eps, weight_offset, runtime)
    run_launch(launch, out, runtime)
    return out.view(x.shape)


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


def _rms_norm_backward(ctx, grad):
    x, weight = ctx.saved_tensors
    acc = _acc_dtype(x.dtype)
    xf, g = x.to(acc), grad.to(acc)
    r = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + ctx.eps)
    xhat = xf * r
    scale = None if weight is None else weight.to(acc) + ctx.weight_offset
    gx = g if scale is None else g * scale
    dx = r * (gx - xhat * (gx * xhat).mean(-1, keepdim=True))
    dw = None
    if weight is not None and ctx.needs_input_grad[1]:
        dw = (g * xhat).reshape(-1, x.shape[-1]).sum(0).to(weight.dtype)
    return dx.to(x.dtype), dw, None, None


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


def _layer_norm_backward(ctx, grad):
    x, weight, bias = ctx.saved_tensors
    shape = (x.shape[-1],)
    _, mean, rstd = torch.ops.aten.native_layer_norm(x, shape, weight, bias, ctx.eps)
    mask = [ctx.needs_input_grad[0], weight is not None and ctx.needs_input_grad[1],
            bias is not None and ctx.needs_input_grad[2]]
    dx, dw, db = torch.ops.aten.native_layer_norm_backward(grad, x, shape, mean, rstd, weight, bias, mask)
    return dx, dw, db, None


layer_norm.register_autograd(_layer_norm_backward, setup_context=_layer_norm_setup)
