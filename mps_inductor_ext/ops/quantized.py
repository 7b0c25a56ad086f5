"""mpsk::quantized_linear: x @ W^T (+ bias) with W in the low-bit format of quantization.py, on
quantized.metal.

Decoding a language model multiplies a few rows of activations by every weight once per token, so
its time is the weights' bytes: the kernel reads the packed words (a quarter of fp16's bytes at 4
bits) and dequantizes them in registers, never writing W out.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from .. import config
from ..config import QuantizedPolicy
from ..quantization import BITS, GROUP_SIZES, dequantize, unpack
from ..shaders import load_source
from .common import METAL_DTYPES, check_like, check_tensor, new_buffer, tuned_runtime
from .launch import IntArg, KernelLaunch, LaunchPlan, Size, TensorArg, ceil_div, specialize
from .operands import Operand, OpLaunch, run_launch

MAX_ROWS = 8  # rows of x one matvec threadgroup serves
MATMUL_TILE, MATMUL_THREADS = 32, 128  # the matmul's output tile (square) and its four SIMD-groups


@functools.cache
def _template() -> str:
    return load_source("quantized")


def quantized_linear_plan(dtype: torch.dtype, rows: Size, n_out: Size, k_in: Size, x_strides: tuple[Size, Size],
                          *, group_size: int, bits: int, has_bias: bool, policy: QuantizedPolicy) -> LaunchPlan:
    """Up to policy.matvec_max_rows rows: the matvec kernel over blocks of up to MAX_ROWS rows, ROWS
    being the row count itself when it is a known int below the block (decode's one row costs no
    registers for eight), else MAX_ROWS. More rows: the matmul kernel over 32 x 32 output tiles.

    `rows` may be symbolic; a lowering passes a decided size (lowerings.decided_size) whose
    comparison with matvec_max_rows is known."""
    defines = {"DTYPE": METAL_DTYPES[dtype], "BITS": bits, "GROUP_SIZE": group_size, "HAS_BIAS": has_bias}
    args = [TensorArg("out"), TensorArg("x"), TensorArg("w_packed"), TensorArg("scales"), TensorArg("biases")]
    args += [TensorArg("bias")] if has_bias else []
    args += [IntArg(v) for v in (rows, n_out, k_in, *x_strides)]
    if rows <= policy.matvec_max_rows:
        block = rows if isinstance(rows, int) and 0 < rows < MAX_ROWS else MAX_ROWS
        outs, simds = policy.outputs_per_simdgroup, policy.simdgroups
        source = specialize(_template(), {**defines, "ROWS": block, "OUTS": outs})
        threads = (ceil_div(n_out, outs * simds) * 32 * simds, ceil_div(rows, block))
        kernel, group = "quantized_matvec", (32 * simds, 1)
    else:
        # ROWS and OUTS only let the matvec in the same source compile; the matmul does not read them.
        source = specialize(_template(), {**defines, "ROWS": MAX_ROWS, "OUTS": 1})
        threads = (ceil_div(n_out, MATMUL_TILE) * MATMUL_THREADS, ceil_div(rows, MATMUL_TILE))
        kernel, group = "quantized_matmul", (MATMUL_THREADS, 1)
    launch = KernelLaunch(source, f"{kernel}_{METAL_DTYPES[dtype]}", tuple(args), threads, group)
    return LaunchPlan((launch,))


def quantized_linear_launch(x: Operand, w_packed: Operand, scales: Operand, biases: Operand, group_size: int,
                            bits: int, bias: Operand | None, runtime: str) -> OpLaunch:
    """The launch of one call, for the eager op and the lowering alike: x is (rows, K), read through
    its strides; the weights are contiguous; the output is contiguous (rows, N)."""
    rows, k_in = x.shape
    plan = quantized_linear_plan(x.dtype, rows, w_packed.shape[0], k_in, x.stride, group_size=group_size,
                                 bits=bits, has_bias=bias is not None, policy=config.quantized)
    operands = {"x": x, "w_packed": w_packed, "scales": scales, "biases": biases, "bias": bias}
    return OpLaunch(plan, {k: v for k, v in operands.items() if v is not None})


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def quantized_linear_reference(x: torch.Tensor, w_packed: torch.Tensor, scales: torch.Tensor, biases: torch.Tensor,
                               group_size: int, bits: int, bias: torch.Tensor | None = None) -> torch.Tensor:
    """The op's ATen math: W dequantized in fp32 (fp64 for fp64), F.linear in fp32, rounded once."""
    acc = _acc_dtype(x.dtype)
    w = dequantize(w_packed, scales.to(acc), biases.to(acc), group_size, bits)
    return F.linear(x.to(acc), w, None if bias is None else bias.to(acc)).to(x.dtype)


def _rows(x: torch.Tensor) -> torch.Tensor:
    """x as (rows, K): itself when 2-D (any strides: the kernel reads through them), else a view when
    the leading dimensions allow one, else a copy."""
    if x.dim() == 2:
        return x
    try:
        return x.view(-1, x.shape[-1])
    except RuntimeError:
        return x.reshape(-1, x.shape[-1])


def _run_metal(x, w_packed, scales, biases, group_size, bits, bias, runtime) -> torch.Tensor:
    rows = _rows(x)
    out = new_buffer((rows.shape[0], w_packed.shape[0]), x.dtype, x.device)
    if out.numel() == 0:
        return out.view(*x.shape[:-1], w_packed.shape[0])
    weights = (Operand.of(t.contiguous()) for t in (w_packed, scales, biases))
    launch = quantized_linear_launch(Operand.of(rows), *weights, group_size, bits,
                                     None if bias is None else Operand.of(bias.contiguous()), runtime)
    run_launch(launch, out, runtime)
    return out.view(*x.shape[:-1], w_packed.shape[0])


def _check(x, w_packed, scales, biases, group_size, bits, bias) -> None:
    op = "quantized_linear"
    check_tensor(op, "x", x, min_dim=1)
    if isinstance(bits, bool) or bits not in BITS:
        raise ValueError(f"mpsk.{op}: bits must be one of {BITS}, got {bits!r}")
    if isinstance(group_size, bool) or group_size not in GROUP_SIZES:
        raise ValueError(f"mpsk.{op}: group_size must be one of {GROUP_SIZES}, got {group_size!r}")
    if not isinstance(w_packed, torch.Tensor) or w_packed.dtype != torch.int32 or w_packed.dim() != 2:
        raise TypeError(f"mpsk.{op}: w_packed must be a 2-D int32 tensor (N, K * bits / 32), got "
                        f"{getattr(w_packed, 'dtype', type(w_packed).__name__)} "
                        f"{tuple(getattr(w_packed, 'shape', ()))}")
    if w_packed.device != x.device:
        raise ValueError(f"mpsk.{op}: w_packed is on {w_packed.device} but x is on {x.device}")
    k = x.shape[-1]
    if k % group_size:
        raise ValueError(f"mpsk.{op}: x's last dimension {k} is not a multiple of group_size {group_size}")
    n = w_packed.shape[0]
    if w_packed.shape[1] * (32 // bits) != k:
        raise ValueError(f"mpsk.{op}: w_packed has shape {tuple(w_packed.shape)}, which holds "
                         f"{w_packed.shape[1] * (32 // bits)} {bits}-bit values per row, but x has K={k} features")
    for name, t in (("scales", scales), ("biases", biases)):
        check_tensor(op, name, t)
        check_like(op, name, t, x, "x")
        if tuple(t.shape) != (n, k // group_size):
            raise ValueError(f"mpsk.{op}: {name} must have shape (N, K / group_size) = {(n, k // group_size)}, "
                             f"got {tuple(t.shape)}")
    if bias is not None:
        check_tensor(op, "bias", bias, dim=1)
        check_like(op, "bias", bias, x, "x")
        if bias.shape[0] != n:
            raise ValueError(f"mpsk.{op}: bias has {bias.shape[0]} elements but the weight has N={n} rows")


@torch.library.custom_op("mpsk::quantized_linear", mutates_args=())
def quantized_linear(x: torch.Tensor, w_packed: torch.Tensor, scales: torch.Tensor, biases: torch.Tensor,
                     group_size: int, bits: int, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x (..., K) @ W^T (+ bias) -> (..., N), contiguous, W (N, K) the dequantized weight of
    quantization.py's format: w_packed int32 (N, K * bits / 32), scales and biases (N, K / group_size)
    in x's dtype, W[n, k] = scales[n, k // group_size] * q[n, k] + biases[n, k // group_size].
    bits 4 or 8, group_size 32, 64 or 128; fp32 accumulation."""
    args = (x, w_packed, scales, biases, group_size, bits, bias)
    _check(*args)
    runtime = tuned_runtime("quantized_linear", args)
    return quantized_linear_reference(*args) if runtime is None else _run_metal(*args, runtime)


@quantized_linear.register_fake
def _(x, w_packed, scales, biases, group_size, bits, bias=None):
    _check(x, w_packed, scales, biases, group_size, bits, bias)
    return x.new_empty((*x.shape[:-1], w_packed.shape[0]))


def _setup(ctx, inputs, output):
    x, w_packed, scales, biases, group_size, bits, bias = inputs
    ctx.save_for_backward(x, w_packed, scales, biases)
    ctx.group_size, ctx.bits = group_size, bits


def _backward(ctx, grad):
    """dx = grad @ W; and, for callers who train the scales or biases (QuantizedLinear keeps them
    frozen), dW = grad^T x summed per group, times q for the scales; dbias = grad summed over rows."""
    x, w_packed, scales, biases = ctx.saved_tensors
    acc = _acc_dtype(x.dtype)
    g = grad.to(acc)
    dx = dscales = dbiases = dbias = None
    if ctx.needs_input_grad[0]:
        w = dequantize(w_packed, scales.to(acc), biases.to(acc), ctx.group_size, ctx.bits)
        dx = (g @ w).to(x.dtype)
    if ctx.needs_input_grad[2] or ctx.needs_input_grad[3]:
        n = w_packed.shape[0]
        dw = (g.reshape(-1, n).T @ x.reshape(-1, x.shape[-1]).to(acc)).reshape(n, -1, ctx.group_size)
        q = unpack(w_packed, ctx.bits).reshape(dw.shape).to(acc)
        dscales = (dw * q).sum(-1).to(scales.dtype) if ctx.needs_input_grad[2] else None
        dbiases = dw.sum(-1).to(biases.dtype) if ctx.needs_input_grad[3] else None
    needs = ctx.needs_input_grad
    if len(needs) > 6 and needs[6]:  # bias given (a call may leave the default out)
        dbias = g.reshape(-1, g.shape[-1]).sum(0).to(grad.dtype)
    return (dx, None, dscales, dbiases, None, None, dbias)[: len(needs)]


quantized_linear.register_autograd(_backward, setup_context=_setup)
