"""mpsk::softmax: softmax and log_softmax over any dimension on softmax.metal."""

from __future__ import annotations

import dataclasses
import functools
import math

import torch

from .. import config
from ..config import SoftmaxPolicy
from ..shaders import load_source
from .common import METAL_DTYPES, capped, check_tensor, new_buffer, threads_per_row, tuned_runtime
from .launch import IntArg, KernelLaunch, LaunchPlan, Size, TensorArg, ceil_div, fit_to_pipelines, specialize
from .operands import Operand, OpLaunch, rows_vector_ok, run_launch

MAX_REGISTER_LOADS = 8  # loads per thread kept in registers; longer rows take the online form


@functools.cache
def _template() -> str:
    return load_source("reduce") + load_source("softmax")


def softmax_plan(
    dtype: torch.dtype,
    outer: int,
    cols: int | Size,
    inner: int,
    x_strides: tuple[int, int, int],
    out_strides: tuple[int, int, int],
    *,
    log: bool,
    vector_ok: bool,
    policy: SoftmaxPolicy,
) -> LaunchPlan:
    """One threadgroup per row of an (outer, cols, inner) view, rows being (outer, inner) pairs.

    Rows up to `policy.online_above` that fit in MAX_REGISTER_LOADS loads per thread are
    read once into registers; longer rows take the online form (one read for the
    running max and rescaled sum, one to write), so register use stays bounded.
    Any size may be symbolic; a symbolic `cols` takes the online form, which serves any length.
    """
    vec = 4 if vector_ok and policy.vector_width == 4 else 1
    threads = threads_per_row("softmax", dtype, cols, vec, policy)
    nreg = 0
    if isinstance(cols, int) and cols <= policy.online_above and ceil_div(cols, threads * vec) <= MAX_REGISTER_LOADS:
        nreg = ceil_div(cols, threads * vec)
    source = specialize(_template(), {"DTYPE": METAL_DTYPES[dtype], "VEC": vec, "NREG": nreg, "LOG": log},
                        index_extents=(cols + threads * vec, cols * x_strides[1], cols * out_strides[1]))
    args = (TensorArg("out"), TensorArg("x"), IntArg(cols), IntArg(inner),
            *(IntArg(s) for s in x_strides), *(IntArg(s) for s in out_strides))
    rows = outer * inner
    launch = KernelLaunch(source, f"softmax_{METAL_DTYPES[dtype]}", args, (rows * threads,), (threads,))
    return LaunchPlan((launch,))


def vector_ok(x: Operand) -> bool:
    """Whether 4-wide loads suit an (outer, cols, inner) operand: rows along unit-stride columns
    (inner == 1), each starting on a 4-element boundary (the output, contiguous, then is too)."""
    outer, cols, inner = x.shape
    return inner == 1 and x.stride[1] == 1 and rows_vector_ok(
        dataclasses.replace(x, shape=(outer, cols), stride=x.stride[:2]))


def softmax_launch(x: Operand, log: bool, runtime: str) -> OpLaunch:
    """The launch of one softmax over the middle dimension of `x` viewed as (outer, cols, inner),
    fitted to the kernel's thread limit, for the eager op and the lowering alike; the output is
    contiguous."""
    outer, cols, inner = x.shape
    out_strides = (cols * inner, inner, 1)
    plan = fit_to_pipelines(lambda cap: softmax_plan(
        x.dtype, outer, cols, inner, x.stride, out_strides, log=log, vector_ok=vector_ok(x),
        policy=capped(config.softmax, cap)), runtime)
    return OpLaunch(plan, {"x": x})


def _run_metal(x: torch.Tensor, dim: int, log: bool, runtime: str) -> torch.Tensor:
    out = new_buffer(x.shape, x.dtype, x.device)
    if x.numel() == 0:
        return out
    shape = x.shape if x.dim() else (1,)
    outer, cols, inner = math.prod(shape[:dim]), shape[dim], math.prod(shape[dim + 1:])
    try:  # strided in place when the dims around `dim` merge; else one copy
        x3 = x.view(outer, cols, inner)
    except RuntimeError:
        x3 = x.contiguous().view(outer, cols, inner)
    run_launch(softmax_launch(Operand.of(x3), log, runtime), out.view(outer, cols, inner), runtime)
    return out


def _check(input: torch.Tensor, dim: object, log: object) -> int:
    """Validates the arguments and returns `dim` as a non-negative index."""
    check_tensor("softmax", "input", input)
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise TypeError(f"mpsk.softmax: dim must be an int, got {dim!r}")
    if not isinstance(log, bool):
        raise TypeError(f"mpsk.softmax: log must be a bool, got {log!r}")
    ndim = max(input.dim(), 1)
    if not -ndim <= dim < ndim:
        raise ValueError(f"mpsk.softmax: dim {dim} is out of range for input of shape {tuple(input.shape)}")
    return dim % ndim


def softmax_reference(input: torch.Tensor, dim: int, log: bool = False) -> torch.Tensor:
    """torch.softmax / torch.log_softmax over `dim`, contiguous as the op's result is."""
    return (torch.log_softmax if log else torch.softmax)(input, dim).contiguous()


@torch.library.custom_op("mpsk::softmax", mutates_args=())
def softmax(input: torch.Tensor, dim: int, log: bool = False) -> torch.Tensor:
    """torch.softmax (or torch.log_softmax with `log`) over `dim`, in the input's dtype.

    fp32 accumulation; rows whose max is infinite (all -inf, or holding +inf) give
    NaN as ATen does. The output is always contiguous.
    """
    d = _check(input, dim, log)
    runtime = tuned_runtime("softmax", (input, dim, log))
    if runtime is None:
        return softmax_reference(input, dim, log)
    return _run_metal(input, d, log, runtime)


@softmax.register_fake
def _(input, dim, log=False):
    _check(input, dim, log)
    return torch.empty_like(input, memory_format=torch.contiguous_format)


def _setup(ctx, inputs, output):
    input, dim, log = inputs
    ctx.save_for_backward(output)
    ctx.dim, ctx.log, ctx.input_dtype = dim, log, input.dtype


def _backward(ctx, grad):
    (out,) = ctx.saved_tensors
    fn = torch.ops.aten._log_softmax_backward_data if ctx.log else torch.ops.aten._softmax_backward_data
    return fn(grad, out, ctx.dim, ctx.input_dtype), None, None


softmax.register_autograd(_backward, setup_context=_setup)
