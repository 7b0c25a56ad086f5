"""mpsk::rope and mpsk::rope_qk: rotary position embedding (rotate_half or interleaved, partial rotary) on
rope.metal; rope_qk rotates q and k with the same tables in one launch."""

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


def _items(dim: object, rot: object) -> object:
    """Work items of a position: R/2 rotated pairs and D - R copied features."""
    return rot // 2 + dim - rot


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
    """One thread per rotated pair (R/2) or copied feature (D - R) of each (b, s) position, walking
    every head: a table broadcast over heads is read once per position.

    Every size and stride may be symbolic; only `interleaved` picks the variant.
    """
    batch, heads, seq, dim = shape
    positions = batch * seq
    items = _items(dim, rot)
    total = positions * items
    check_grid("rope", total)
    source = specialize(_template(), {"DTYPE": METAL_DTYPES[dtype], "INTERLEAVED": interleaved},
                        index_extents=(dim * x_strides[3], rot * cos_strides[3], rot * sin_strides[3]))
    args = (TensorArg("out"), TensorArg("x"), TensorArg("cos"), TensorArg("sin"),
            *(IntArg(v) for v in (positions, items, heads, seq, dim, rot, *x_strides, *cos_strides, *sin_strides)))
    # The group size does not depend on the shape (sizes may be symbolic): a grid smaller
    # than one group is a single trimmed group under dispatchThreads.
    launch = KernelLaunch(source, f"rope_{METAL_DTYPES[dtype]}", args, (total,), (policy.threads_per_group,))
    return LaunchPlan((launch,))


def rope_qk_plan(
    dtype: torch.dtype,
    sizes: tuple[object, object, object, object, object, object],
    strides: tuple[tuple, tuple, tuple, tuple, tuple, tuple],
    *,
    interleaved: bool,
    policy: RopePolicy,
) -> LaunchPlan:
    """rope of q and k in one launch: one thread per work item of each (b, s) position, walking the
    q heads then the k heads with the table values it read once.

    sizes: (B, Hq, Hk, S, D, R); strides: q and k (b, h, s, d), k_out (b, h, s), cos and sin
    (b, s, d) of their broadcast (0 along broadcast dimensions); q_out is contiguous. All may be
    symbolic.
    """
    batch, q_heads, k_heads, seq, dim, rot = sizes
    q_st, k_st, ko_st, c_st, s_st = strides
    positions = batch * seq
    items = _items(dim, rot)
    total = positions * items
    check_grid("rope_qk", total)
    source = specialize(_template(), {"DTYPE": METAL_DTYPES[dtype], "INTERLEAVED": interleaved},
                        index_extents=(dim * q_st[3], dim * k_st[3], dim, rot * c_st[2], rot * s_st[2]))
    ints = (positions, items, q_heads, k_heads, seq, rot, *q_st, *k_st, *ko_st, *c_st, *s_st)
    args = (TensorArg("out"), TensorArg("k_out"), TensorArg("q"), TensorArg("k"), TensorArg("cos"),
            TensorArg("sin"), *(IntArg(v) for v in ints))
    launch = KernelLaunch(source, f"rope_qk_{METAL_DTYPES[dtype]}", args, (total,), (policy.threads_per_group,))
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


def rope_qk_launch(q: Operand, k: Operand, cos: Operand, sin: Operand, k_out: Operand, interleaved: bool,
                   runtime: str) -> OpLaunch:
    """The launch of one rope_qk call, for the eager op and the lowering alike: q and k read through
    their strides, cos and sin in place broadcast to (B, 1, S, R); q's output ("out") is contiguous,
    k's is written through `k_out`'s strides."""
    batch, q_heads, seq, dim = q.shape
    k_heads, rot = k.shape[1], cos.shape[-1]
    table = (batch, 1, seq, rot)
    c_st, s_st = broadcast_strides(cos, table), broadcast_strides(sin, table)
    strides = (q.stride, k.stride, k_out.stride[:3], (c_st[0], *c_st[2:]), (s_st[0], *s_st[2:]))
    plan = rope_qk_plan(q.dtype, (batch, q_heads, k_heads, seq, dim, rot), strides, interleaved=interleaved,
                        policy=config.rope)
    return OpLaunch(plan, {"k_out": k_out, "q": q, "k": k, "cos": cos, "sin": sin})


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


def _check_qk(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: object) -> None:
    _check(q, cos, sin, interleaved)
    check_tensor("rope_qk", "k", k, dim=4)
    check_like("rope_qk", "k", k, q, "q")
    if (k.shape[0], k.shape[2], k.shape[3]) != (q.shape[0], q.shape[2], q.shape[3]):
        raise ValueError(f"mpsk.rope_qk: q {tuple(q.shape)} and k {tuple(k.shape)} must agree in batch, "
                         "sequence and head dim (B, S, D)")
    for name, t in (("cos", cos), ("sin", sin)):
        if t.dim() >= 3 and t.shape[-3] != 1:
            raise ValueError(f"mpsk.rope_qk: {name} has shape {tuple(t.shape)}; it must be the same for every "
                             "head (size 1 or absent in the head dimension): use mpsk.rope per tensor")


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


def rope_qk_reference(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                      interleaved: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The op's ATen math: rope_reference of q and of k."""
    return rope_reference(q, cos, sin, interleaved), rope_reference(k, cos, sin, interleaved)


def _run_metal_qk(q, k, cos, sin, interleaved: bool, runtime: str) -> tuple[torch.Tensor, torch.Tensor]:
    q_out, k_out = new_buffer(q.shape, q.dtype, q.device), new_buffer(k.shape, k.dtype, k.device)
    if q_out.numel() + k_out.numel() == 0:
        return q_out, k_out
    ops = (Operand.of(t) for t in (q, k, cos, sin, k_out))
    run_launch(rope_qk_launch(*ops, interleaved, runtime), q_out, runtime)
    return q_out, k_out


@torch.library.custom_op("mpsk::rope_qk", mutates_args=())
def rope_qk(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
            interleaved: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """`(rope(q, cos, sin), rope(k, cos, sin))` in one kernel launch, reading cos and sin once per
    position for all heads of q and k.

    q (B, Hq, S, D) and k (B, Hk, S, D) share B, S and D (not the head count: GQA); cos and sin are
    as for mpsk.rope but the same for every head (they broadcast to (B, 1, S, R)). Both outputs are
    contiguous.
    """
    _check_qk(q, k, cos, sin, interleaved)
    runtime = tuned_runtime("rope_qk", (q, k, cos, sin, interleaved))
    if runtime is None:
        return rope_qk_reference(q, k, cos, sin, interleaved)
    return _run_metal_qk(q, k, cos, sin, interleaved, runtime)


@rope_qk.register_fake
def _(q, k, cos, sin, interleaved=False):
    _check_qk(q, k, cos, sin, interleaved)
    contiguous = torch.contiguous_format
    return torch.empty_like(q, memory_format=contiguous), torch.empty_like(k, memory_format=contiguous)


def _setup_qk(ctx, inputs, output):
    q, k, cos, sin, interleaved = inputs
    ctx.save_for_backward(q, k, cos, sin)
    ctx.interleaved = interleaved


class _RopeCtx:
    """What _backward reads of a rope ctx, for one of rope_qk's two tensors."""

    def __init__(self, saved: tuple, interleaved: bool, needs: tuple) -> None:
        self.saved_tensors, self.interleaved, self.needs_input_grad = saved, interleaved, needs


def _backward_qk(ctx, grad_q, grad_k):
    """rope's backward for q and for k; cos and sin get the sum of both."""
    q, k, cos, sin = ctx.saved_tensors
    need_q, need_k, need_c, need_s = ctx.needs_input_grad[:4]
    grads = []
    for x, g, need in ((q, grad_q, need_q), (k, grad_k, need_k)):
        if g is None:
            g = torch.zeros_like(x)
        grads.append(_backward(_RopeCtx((x, cos, sin), ctx.interleaved, (need, need_c, need_s)), g))
    (dq, dcos_q, dsin_q, _), (dk, dcos_k, dsin_k, _) = grads
    dcos = dcos_q + dcos_k if need_c else None
    dsin = dsin_q + dsin_k if need_s else None
    return dq, dk, dcos, dsin, None


rope_qk.register_autograd(_backward_qk, setup_context=_setup_qk)
