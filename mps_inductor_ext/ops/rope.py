"""mpsk::rope: rotary position embedding (rotate_half or interleaved, partial rotary) on rope.metal."""

from __future__ import annotations

import functools

import torch

from .. import config
from ..config import RopePolicy
from ..shaders import load_source
from .common import METAL_DTYPES, check_like, check_tensor, new_buffer, tuned_runtime
from .launch import IntArg, KernelLaunch, LaunchPlan, TensorArg, check_grid, specialize
from .operands import Operand, OpLaunch, broadcast_strides, run_launch


@functools.cache
def _template() -> str:
    return load_source("rope")


def rope_plan(
    dtype: torch.dtype,
    shape: tuple[int, int, int, int],
    rot: int,
    x_strides: tuple[int, int, int, int],
    cos_strides: tuple[int, int, int, int],
    sin_strides: tuple[int, int, int, int],
    *,
    interleaved: bool,
    policy: RopePolicy,
) -> LaunchPlan:
    """One thread per rotated pair (R/2) or copied feature (D - R) of each (b, h, s) row.

    Every size and stride may be symbolic; only `interleaved` picks the variant.
    """
    batch, heads, seq, dim = shape
    rows = batch * heads * seq
    items = rot // 2 + dim - rot
    total = rows * items
    check_grid("rope", total)
    source = specialize(_template(), {"DTYPE": METAL_DTYPES[dtype], "INTERLEAVED": interleaved},
                        index_extents=(dim * x_strides[3], rot * cos_strides[3], rot * sin_strides[3]))
    args = (TensorArg("out"), TensorArg("x"), TensorArg("cos"), TensorArg("sin"),
            *(IntArg(v) for v in (rows, items, heads, seq, dim, rot, *x_strides, *cos_strides, *sin_strides)))
    # The group size does not depend on the shape (sizes may be symbolic): a grid smaller
    # than one group is a single trimmed group under dispatchThreads.
    launch = KernelLaunch(source, f"rope_{METAL_DTYPES[dtype]}", args, (total,), (policy.threads_per_group,))
    return LaunchPlan((launch,))


def _rotate(x: torch.Tensor, interleaved: bool) -> torch.Tensor:
    """rotate_half ([-x2, x1] of the halves) or rotate_every_two (pairs (x0, x1) -> (-x1, x0))."""
    if interleaved:
        return torch.stack((-x[..., 1::2], x[..., ::2]), dim=-1).flatten(-2)
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def rope_reference(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool = False) -> torch.Tensor:
    """The op's ATen math: the rotation in fp32 (fp64 for fp64), the rest of x passed through."""
    acc = _acc_dtype(x.dtype)
    rot = cos.shape[-1]
    x1 = x[..., :rot].to(acc)
    y1 = x1 * cos.to(acc) + _rotate(x1, interleaved) * sin.to(acc)
    return torch.cat((y1.to(x.dtype), x[..., rot:]), dim=-1)


def rope_launch(x: Operand, cos: Operand, sin: Operand, interleaved: bool, runtime: str) -> OpLaunch:
    """The launch of one rope call, for the eager op and the lowering alike: x (B, H, S, D) read
    through its strides, cos and sin read in place broadcast to (B, H, S, R); the output is
    contiguous."""
    rot = cos.shape[-1]
    full = (*x.shape[:3], rot)
    plan = rope_plan(x.dtype, x.shape, rot, x.stride, broadcast_strides(cos, full), broadcast_strides(sin, full),
                     interleaved=interleaved, policy=config.rope)
    return OpLaunch(plan, {"x": x, "cos": cos, "sin": sin})


def _run_metal(x, cos, sin, interleaved: bool, runtime: str) -> torch.Tensor:
    out = new_buffer(x.shape, x.dtype, x.device)
    if out.numel() == 0:
        return out
    run_launch(rope_launch(Operand.of(x), Operand.of(cos), Operand.of(sin), interleaved, runtime), out, runtime)
    return out


def _check(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: object) -> None:
    check_tensor("rope", "x", x, dim=4)
    if not isinstance(interleaved, bool):
        raise TypeError(f"mpsk.rope: interleaved must be a bool, got {interleaved!r}")
    for name, t in (("cos", cos), ("sin", sin)):
        check_tensor("rope", name, t, min_dim=1)
        check_like("rope", name, t, x, "x")
        if t.dim() > 4:
            raise ValueError(f"mpsk.rope: {name} has {t.dim()} dimensions; it must broadcast to (B, H, S, R)")
    rot = cos.shape[-1]
    if sin.shape[-1] != rot:
        raise ValueError(
            f"mpsk.rope: cos and sin must have the same last dimension, got {cos.shape[-1]} and {sin.shape[-1]}"
        )
    if rot % 2:
        raise ValueError(f"mpsk.rope: the rotary dimension R (last dimension of cos and sin) must be even, got {rot}")
    if rot > x.shape[-1]:
        raise ValueError(f"mpsk.rope: cos and sin have R={rot} features, more than x's last dimension {x.shape[-1]}")
    full = (*x.shape[:3], rot)
    for name, t in (("cos", cos), ("sin", sin)):
        if any(n not in (1, m) for n, m in zip(reversed(t.shape), reversed(full), strict=False)):
            raise ValueError(f"mpsk.rope: {name} has shape {tuple(t.shape)}, which does not broadcast to "
                             f"(B, H, S, R) = {full}")


@torch.library.custom_op("mpsk::rope", mutates_args=())
def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool = False) -> torch.Tensor:
    """Rotary position embedding of x (B, H, S, D); the output is contiguous (B, H, S, D).

    cos and sin have last dimension R (even, R <= D) and broadcast to (B, H, S, R),
    e.g. (S, R), (1, 1, S, R) or (B, 1, S, R); they must match x's dtype and device.
    With x1 = x[..., :R]:

        out[..., :R] = x1 * cos + rotate(x1) * sin     (fp32 math, rounded once)
        out[..., R:] = x[..., R:]                       (partial rotary)

    - interleaved=False: rotate = rotate_half, rotate(x1) = cat(-x1[..., R/2:], x1[..., :R/2])
      (Llama / NeoX; HF passes cos = cat(freqs, freqs).cos()).
    - interleaved=True: rotate = rotate_every_two, pairs (x1[2i], x1[2i+1]) ->
      (-x1[2i+1], x1[2i]), so out[2i] = x[2i] * cos[2i] - x[2i+1] * sin[2i] and
      out[2i+1] = x[2i+1] * cos[2i+1] + x[2i] * sin[2i+1] (GPT-J). cos and sin hold one
      value per feature, i.e. HF GPT-J's per-pair tables after its
      `repeat_interleave(..., 2, dim=-1)`: pass those, not the (..., R/2) tables.
    """
    _check(x, cos, sin, interleaved)
    runtime = tuned_runtime("rope", (x, cos, sin, interleaved))
    if runtime is None:
        return rope_reference(x, cos, sin, interleaved)
    return _run_metal(x, cos, sin, interleaved, runtime)


@rope.register_fake
def _(x, cos, sin, interleaved=False):
    _check(x, cos, sin, interleaved)
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _setup(ctx, inputs, output):
    x, cos, sin, interleaved = inputs
    ctx.save_for_backward(x, cos, sin)
    ctx.interleaved = interleaved


def _backward(ctx, grad):
    """rotate is a signed permutation with rotate^T = -rotate, so dx1 = g * cos - rotate(g * sin);
    dcos = g * x1 and dsin = g * rotate(x1), summed back to the shapes cos and sin broadcast from."""
    x, cos, sin = ctx.saved_tensors
    acc = _acc_dtype(x.dtype)
    rot = cos.shape[-1]
    g1, x1 = grad[..., :rot].to(acc), x[..., :rot].to(acc)
    dx = dcos = dsin = None
    if ctx.needs_input_grad[0]:
        dx1 = g1 * cos.to(acc) - _rotate(g1 * sin.to(acc), ctx.interleaved)
        dx = torch.cat((dx1.to(x.dtype), grad[..., rot:].to(x.dtype)), dim=-1)
    if ctx.needs_input_grad[1]:
        dcos = (g1 * x1).sum_to_size(cos.shape).to(cos.dtype)
    if ctx.needs_input_grad[2]:
        dsin = (g1 * _rotate(x1, ctx.interleaved)).sum_to_size(sin.shape).to(sin.dtype)
    return dx, dcos, dsin, None


rope.register_autograd(_backward, setup_context=_setup)
