"""mpsk::attention: scaled dot-product attention on attention.metal.

Semantics are F.scaled_dot_product_attention(q, k, v, attn_mask, dropout_p=0, is_causal, scale,
enable_gqa=True) on q (B, Hq, Sq, D), k (B, Hkv, Skv, D), v (B, Hkv, Skv, Dv), plus a sliding
window: window > 0 hides keys j <= i - window (Mistral; same top-left coordinates as the causal
mask), and a logit softcap: softcap > 0 replaces each scaled score s by softcap * tanh(s / softcap)
before the mask is added (Gemma 2; 0.0 is none). A mask and is_causal may be combined (a key must
pass both), as PyTorch's CPU flash kernel allows (its math path refuses the pair). Rows whose keys
are all hidden give 0, as PyTorch's (safe-softmax) math does.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import torch
import torch.nn.functional as F

from .. import config
from ..config import AttentionPolicy
from ..shaders import load_source
from .common import METAL_DTYPES, check_like, check_tensor, new_buffer, tuned_runtime
from .launch import IntArg, KernelLaunch, LaunchPlan, Scratch, TensorArg, ceil_div, fit_to_pipelines, specialize
from .operands import Operand, OpLaunch, broadcast_strides, run_launch

MAX_HEAD_DIM = 256  # registers per lane and threadgroup memory are sized for this
TG_MEMORY = 32 * 1024
# Plans leave this much of TG_MEMORY unused: the compiler may pad or align threadgroup arrays
# differently from the sum of their sizes, and a kernel past the limit fails to make a pipeline.
TG_HEADROOM = 1024
TG_BUDGET = TG_MEMORY - TG_HEADROOM
MAX_BUFFERS = 31  # Metal's buffer argument table; every int64 scalar takes a slot

MASK_NONE, MASK_BOOL, MASK_ADD = 0, 1, 2


@functools.cache
def _template() -> str:
    return load_source("attention")


def prefill_tiles(d: int, dv: int, policy: AttentionPolicy) -> tuple[int, int, int]:
    """(block_q, block_kv, threadgroup bytes) of the prefill kernel, shrunk to fit TG_BUDGET
    (32 KiB less TG_HEADROOM).

    Q block, K tile (rows padded by one float), V tile and the score tile, all fp32.
    """
    bq, bkv = policy.block_q, policy.block_kv

    def nbytes(bq: int, bkv: int) -> int:
        return 4 * (bq * d + bkv * (d + 1) + bkv * dv + bq * bkv)

    while nbytes(bq, bkv) > TG_BUDGET:
        if bkv > 8:
            bkv //= 2
        elif bq // 2 >= policy.prefill_simdgroups and (bq // 2) % policy.prefill_simdgroups == 0:
            bq //= 2
        else:
            raise ValueError(
                f"mpsk.attention: no prefill tiling of head dims {d}/{dv} fits {TG_BUDGET} bytes of threadgroup "
                f"memory with {policy.prefill_simdgroups} SIMD-groups"
            )
    return bq, bkv, nbytes(bq, bkv)


def matrix_prefill_tiles(d: int, dv: int, policy: AttentionPolicy) -> tuple[int, int] | None:
    """(block_kv, threadgroup bytes) of the matrix-unit prefill kernel, block_kv halved from the
    policy's until it fits TG_BUDGET; None where that kernel does not apply (a head dim that is not
    a multiple of 8, or no tiling fits): the scalar kernel takes those.

    fp32 K and V tiles, and per SIMD-group an 8 x block_kv score slice and an 8 x 8 staging square.
    """
    if not policy.prefill_matrix or d % 8 or dv % 8:
        return None
    nsg = policy.prefill_simdgroups

    def nbytes(bkv: int) -> int:
        return 4 * (bkv * d + bkv * dv + nsg * 8 * bkv + nsg * 64)

    bkv = policy.block_kv
    while nbytes(bkv) > TG_BUDGET and bkv > 8:
        bkv //= 2
    return (bkv, nbytes(bkv)) if nbytes(bkv) <= TG_BUDGET else None


def decode_rows(dv: int, rows: int) -> int:
    """Query rows the decode kernel keeps in registers per pass over the keys: 8 while that stays
    within 64 floats a lane (Dv <= 128), else 4; 4 when the threadgroup has no more rows than that."""
    return 8 if dv <= 128 and rows > 4 else 4


def decode_tg_bytes(dv: int, policy: AttentionPolicy, d: int = MAX_HEAD_DIM, rows: int = 8) -> int:
    """Threadgroup bytes of the decode kernel: one pass's query rows (head dim `d`; by default the
    largest, an upper bound), the SIMD-groups' max and sum per row and one row's outputs (merged a
    row at a time)."""
    return 4 * (rows * d + policy.decode_simdgroups * (2 * rows + dv))


def decode_partitions(B, groups: int, Skv, policy: AttentionPolicy) -> tuple:
    """(partitions, keys per partition) of the decode grid, whose other dims hold B * `groups`
    threadgroups. Above split_kv_above, partitions of partition_size keys; below it, enough
    partitions of at least min_partition keys (a multiple of 32) to make decode_groups threadgroups,
    where the shape is known (a symbolic one keeps one partition)."""
    if Skv > policy.split_kv_above:
        return ceil_div(Skv, policy.partition_size), policy.partition_size
    if not all(isinstance(n, int) for n in (B, Skv)):
        return 1, Skv
    want = max(1, min(ceil_div(policy.decode_groups, max(B * groups, 1)), Skv // policy.min_partition))
    size = ceil_div(ceil_div(Skv, want), 32) * 32
    return ceil_div(Skv, size), size


def attention_plan(
    dtype: torch.dtype,
    shape: tuple[int, int, int, int, int, int, int],
    strides: tuple[tuple[int, int, int], ...],
    *,
    mask_kind: int,
    mask_strides: tuple[int, int, int, int] | None,
    scale: float,
    is_causal: bool,
    window: int,
    policy: AttentionPolicy,
    softcap: float = 0.0,
) -> LaunchPlan:
    """The launches for one call: prefill, decode, or split decode (partitions, then reduce).

    `shape` is (B, Hq, Hkv, Sq, Skv, D, Dv); `strides` are the (batch, head, seq) strides of
    q, k, v in elements, whose last dimension must be unit-stride. Tensors are named out, q, k,
    v, mask; the split form adds scratch part_m, part_l (B, Hq, Sq, P) and part_o (..., P, Dv),
    the partitions' normalized outputs in q's dtype. Prefill runs on the matrix units where
    matrix_prefill_tiles allows (PREFILL_MATRIX: the same kernel name, another body); decode serves a
    GQA group's query heads in one threadgroup (policy.decode_gqa).
    """
    B, Hq, Hkv, Sq, Skv, D, Dv = shape
    if not (1 <= D <= MAX_HEAD_DIM and 1 <= Dv <= MAX_HEAD_DIM):
        raise ValueError(f"mpsk.attention: the Metal kernels take head dims 1..{MAX_HEAD_DIM}, got D={D}, Dv={Dv}")
    name = METAL_DTYPES[dtype]
    group = Hq // Hkv
    decode = Sq <= policy.decode_max_q
    heads = group if decode and policy.decode_gqa else 1  # query heads per decode threadgroup
    n_part, part_size = decode_partitions(B, Hq // heads, Skv, policy) if decode else (1, Skv)
    split = decode and not (isinstance(n_part, int) and n_part == 1)
    rows = decode_rows(Dv, heads * Sq if isinstance(Sq, int) else heads * policy.decode_max_q)
    bq, bkv, _ = prefill_tiles(D, Dv, policy)
    matrix = None if decode else matrix_prefill_tiles(D, Dv, policy)
    if matrix is not None:
        bq, bkv = 8 * policy.prefill_simdgroups, matrix[0]
    if decode and decode_tg_bytes(Dv, policy, D, rows) > TG_BUDGET:
        raise ValueError(f"mpsk.attention: decode threadgroup memory {decode_tg_bytes(Dv, policy, D, rows)} exceeds "
                         f"{TG_BUDGET}")
    defines = {
        "DTYPE": name,
        "HEAD_DIM": D, "HEAD_DIM_V": Dv, "SCALE": float(scale), "IS_CAUSAL": is_causal, "HAS_WINDOW": window > 0,
        "HAS_SOFTCAP": softcap > 0, "SOFTCAP": float(softcap) if softcap > 0 else 1.0,
        "MASK_KIND": mask_kind, "BLOCK_Q": bq, "BLOCK_KV": bkv, "PREFILL_SIMD": policy.prefill_simdgroups,
        "PREFILL_MATRIX": matrix is not None, "DECODE_MAX_Q": policy.decode_max_q,
        "DECODE_SIMD": policy.decode_simdgroups, "DECODE_SPLIT": split, "DECODE_HEADS": heads, "DECODE_ROWS": rows,
    }
    source = specialize(_template(), defines)
    inputs: list = [TensorArg("q"), TensorArg("k"), TensorArg("v")]
    if mask_kind != MASK_NONE:
        inputs += [TensorArg("mask"), *(IntArg(s) for s in mask_strides)]
    inputs += [IntArg(Sq), IntArg(Skv), IntArg(group), IntArg(max(window, 0))]
    inputs += [IntArg(s) for st in strides for s in st]
    if not decode:
        threads = policy.prefill_simdgroups * 32
        launch = KernelLaunch(source, f"attn_prefill_{name}", (TensorArg("out"), *inputs),
                              (ceil_div(Sq, bq) * threads, Hq, B), (threads, 1, 1))
        return _checked(LaunchPlan((launch,)))
    threads = policy.decode_simdgroups * 32
    grid = (n_part * threads, Hq // heads, B)
    if not split:
        launch = KernelLaunch(source, f"attn_decode_{name}", (TensorArg("out"), *inputs, IntArg(Skv)), grid,
                              (threads, 1, 1))
        return _checked(LaunchPlan((launch,)))
    parts = (TensorArg("part_m"), TensorArg("part_l"), TensorArg("part_o"))
    partition = KernelLaunch(source, f"attn_decode_{name}", (*parts, *inputs, IntArg(part_size)), grid,
                             (threads, 1, 1))
    reduce = KernelLaunch(source, f"attn_reduce_{name}", (TensorArg("out"), *parts, IntArg(n_part)),
                          (B * Hq * Sq * 32,), (32,))
    scratch = (Scratch("part_m", (B, Hq, Sq, n_part), torch.float32),
               Scratch("part_l", (B, Hq, Sq, n_part), torch.float32),
               Scratch("part_o", (B, Hq, Sq, n_part, Dv), dtype))  # normalized: within V's range
    return _checked(LaunchPlan((partition, reduce), scratch))


def capped(policy: AttentionPolicy, max_threads: int) -> AttentionPolicy:
    """The policy with threadgroups of at most `max_threads` (see launch.fit_to_pipelines): fewer
    decode SIMD-groups, and prefill SIMD-groups halved (so they still divide block_q)."""
    most = max(1, max_threads // 32)
    nsg = policy.prefill_simdgroups
    while nsg > most:
        nsg = max(1, nsg // 2)
    return dataclasses.replace(policy, decode_simdgroups=min(policy.decode_simdgroups, most), prefill_simdgroups=nsg)


def _checked(plan: LaunchPlan) -> LaunchPlan:
    for launch in plan.launches:
        if len(launch.args) > MAX_BUFFERS:
            raise ValueError(f"{launch.kernel}: {len(launch.args)} arguments exceed Metal's {MAX_BUFFERS} buffers")
        group = math.prod(g for g in launch.group_size if isinstance(g, int))
        if group > 1024:
            raise ValueError(f"{launch.kernel}: threadgroup of {group} threads exceeds 1024")
    return plan


def _check_inputs(q, k, v, attn_mask, scale, is_causal, window, softcap=0.0) -> None:
    """Every argument check, before any launch (also run by the fake implementation)."""
    op = "attention"
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_tensor(op, name, t, dim=4)
    check_like(op, "k", k, q, "q")
    check_like(op, "v", v, q, "q")
    B, Hq, Sq, D = q.shape
    if k.shape[0] != B or v.shape[0] != B:
        raise ValueError(f"mpsk.attention: batch sizes differ: q {B}, k {k.shape[0]}, v {v.shape[0]}")
    if k.shape[1] != v.shape[1]:
        raise ValueError(f"mpsk.attention: k has {k.shape[1]} heads but v has {v.shape[1]}")
    if k.shape[3] != D:
        raise ValueError(f"mpsk.attention: k's head dim {k.shape[3]} differs from q's {D}")
    if v.shape[2] != k.shape[2]:
        raise ValueError(f"mpsk.attention: v has {v.shape[2]} keys but k has {k.shape[2]}")
    Hkv = k.shape[1]
    if (Hkv == 0 and Hq != 0) or (Hkv != 0 and Hq % Hkv != 0):
        raise ValueError(f"mpsk.attention: q's {Hq} heads are not a multiple of k/v's {Hkv} heads")
    if attn_mask is not None:
        if not isinstance(attn_mask, torch.Tensor):
            raise TypeError(f"mpsk.attention: attn_mask must be a Tensor or None, got {type(attn_mask).__name__}")
        if attn_mask.dtype != torch.bool:
            check_tensor(op, "attn_mask", attn_mask)
        if attn_mask.device != q.device:
            raise ValueError(f"mpsk.attention: attn_mask is on {attn_mask.device} but q is on {q.device}")
        target = (B, Hq, Sq, k.shape[2])
        try:
            ok = attn_mask.dim() <= 4 and torch.broadcast_shapes(attn_mask.shape, target) == target
        except RuntimeError:
            ok = False
        if not ok:
            raise ValueError(
                f"mpsk.attention: attn_mask of shape {tuple(attn_mask.shape)} does not broadcast to (B, Hq, Sq, Skv) "
                f"= {target}"
            )
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float))
                              or not math.isfinite(scale)):
        raise ValueError(f"mpsk.attention: scale must be a finite float or None, got {scale!r}")
    if not isinstance(is_causal, bool):
        raise TypeError(f"mpsk.attention: is_causal must be a bool, got {is_causal!r}")
    if isinstance(window, bool) or not isinstance(window, int):
        raise TypeError(f"mpsk.attention: window must be an int, got {window!r}")
    if window == 0 or window < -1:
        raise ValueError(f"mpsk.attention: window must be -1 (none) or positive, got {window}")
    if (isinstance(softcap, bool) or not isinstance(softcap, (int, float)) or not math.isfinite(softcap)
            or softcap < 0):
        raise ValueError(f"mpsk.attention: softcap must be a finite float >= 0 (0 is none), got {softcap!r}")


def _keep(Sq: int, Skv: int, is_causal: bool, window: int, device: torch.device) -> torch.Tensor | None:
    """(Sq, Skv) bool, True where the causal and window masks let query i see key j; None if neither applies."""
    if not is_causal and window < 0:
        return None
    i = torch.arange(Sq, device=device)[:, None]
    j = torch.arange(Skv, device=device)[None, :]
    keep = torch.ones(Sq, Skv, dtype=torch.bool, device=device)
    if is_causal:
        keep = keep & (j <= i)
    if window > 0:
        keep = keep & (j > i - window)
    return keep


def attention_reference(q, k, v, attn_mask=None, scale=None, is_causal=False, window=-1,
                        softcap=0.0) -> torch.Tensor:
    """ATen's F.scaled_dot_product_attention; the window, and the causal mask when there is also an
    attn_mask (ATen's math path refuses the pair), become part of one explicit mask. With a softcap
    (which SDPA has no argument for) the probabilities are written out, as Gemma 2's eager attention
    writes them."""
    if softcap > 0:
        return _softcapped_reference(q, k, v, attn_mask, scale, is_causal, window, softcap)
    if window > 0 or (is_causal and attn_mask is not None):
        keep = _keep(q.shape[2], k.shape[2], is_causal, window, q.device)
        if attn_mask is None:
            attn_mask = keep
        elif attn_mask.dtype == torch.bool:
            attn_mask = attn_mask & keep
        else:
            attn_mask = attn_mask.masked_fill(~keep, float("-inf"))
        is_causal = False
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal, scale=scale,
                                         enable_gqa=True)
    return out.contiguous()


def _probabilities(q, k, attn_mask, scale, is_causal, window, softcap, acc) -> tuple[torch.Tensor, torch.Tensor]:
    """(P, t): the softmax of the scaled, softcapped and masked scores in `acc` (0 on fully hidden
    rows), and t = tanh(s / softcap) of the scaled scores (None without a softcap)."""
    B, Hq, Sq, D = q.shape
    group = Hq // k.shape[1] if k.shape[1] else 1
    s = q.to(acc) @ k.to(acc).repeat_interleave(group, dim=1).transpose(-1, -2) * softmax_scale(scale, D)
    t = None
    if softcap > 0:
        t = torch.tanh(s / softcap)
        s = t * softcap
    if attn_mask is not None:
        s = s.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else s + attn_mask.to(acc)
    keep = _keep(Sq, k.shape[2], is_causal, window, q.device)
    if keep is not None:
        s = s.masked_fill(~keep, float("-inf"))
    hidden_row = s.amax(-1, keepdim=True) == float("-inf")
    return torch.softmax(s.masked_fill(hidden_row, 0.0), -1).masked_fill(hidden_row, 0.0), t


def _softcapped_reference(q, k, v, attn_mask, scale, is_causal, window, softcap) -> torch.Tensor:
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    p, _ = _probabilities(q, k, attn_mask, scale, is_causal, window, softcap, acc)
    group = q.shape[1] // k.shape[1] if k.shape[1] else 1
    return (p @ v.to(acc).repeat_interleave(group, dim=1)).to(q.dtype).contiguous()


def _lastdim_unit(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 or t.shape[-1] == 1 else t.contiguous()


def softmax_scale(scale: float | None, head_dim: int) -> float:
    """The score scale: the caller's, else 1/sqrt(D) as F.scaled_dot_product_attention's."""
    return 1.0 / math.sqrt(head_dim) if scale is None else scale


def mask_kind(mask: torch.dtype, q: torch.dtype) -> tuple[int, torch.dtype | None] | None:
    """How the kernels read a mask of dtype `mask` beside q of dtype `q`: a bool mask as bytes, a
    float mask of q's dtype added to the scores; None for any other (the eager op converts it first)."""
    if mask == torch.bool:
        return MASK_BOOL, torch.uint8
    return (MASK_ADD, None) if mask == q else None


def attention_launch(q: Operand, k: Operand, v: Operand, attn_mask: Operand | None, scale: float | None,
                     is_causal: bool, window: int, runtime: str, softcap: float = 0.0) -> OpLaunch:
    """The launch of one attention call, for the eager op and the lowering alike: q, k, v read through
    their (batch, head, seq) strides with a unit-stride last dimension, the mask through strides that
    broadcast it to (B, Hq, Sq, Skv), fitted to the kernels' thread limits. The output is contiguous
    (B, Hq, Sq, Dv)."""
    B, Hq, Sq, D = q.shape
    Hkv, Skv, Dv = k.shape[1], k.shape[2], v.shape[3]
    operands = {"q": q, "k": k, "v": v}
    kind, mask_strides = MASK_NONE, None
    if attn_mask is not None:
        how = mask_kind(attn_mask.dtype, q.dtype)
        if how is None:
            raise TypeError(f"mpsk.attention: a {attn_mask.dtype} mask beside {q.dtype} q has no kernel")
        kind, read_as = how
        operands["mask"] = dataclasses.replace(attn_mask, read_as=read_as)
        mask_strides = broadcast_strides(attn_mask, (B, Hq, Sq, Skv))
    plan = fit_to_pipelines(lambda cap: attention_plan(
        q.dtype, (B, Hq, Hkv, Sq, Skv, D, Dv), tuple(tuple(t.stride[:3]) for t in (q, k, v)),
        mask_kind=kind, mask_strides=mask_strides, scale=softmax_scale(scale, D), is_causal=is_causal,
        window=window, policy=capped(config.attention, cap), softcap=softcap,
    ), runtime)
    return OpLaunch(plan, operands)


def _run_metal(q, k, v, attn_mask, scale, is_causal, window, runtime, softcap=0.0) -> torch.Tensor:
    B, Hq, Sq, D = q.shape
    Skv, Dv = k.shape[2], v.shape[3]
    out = new_buffer((B, Hq, Sq, Dv), q.dtype, q.device)
    if out.numel() == 0:
        return out
    if Skv == 0 or D == 0:  # no keys: PyTorch gives zeros; D == 0: leave the corner to ATen
        return out.zero_() if Skv == 0 else attention_reference(q, k, v, attn_mask, scale, is_causal, window,
                                                                 softcap)
    q, k, v = (Operand.of(_lastdim_unit(t)) for t in (q, k, v))
    mask = None
    if attn_mask is not None:
        mask = Operand.of(attn_mask if mask_kind(attn_mask.dtype, q.dtype) else attn_mask.to(q.dtype))
    run_launch(attention_launch(q, k, v, mask, scale, is_causal, window, runtime, softcap), out, runtime)
    return out


@torch.library.custom_op("mpsk::attention", mutates_args=())
def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    scale: float | None = None,
    is_causal: bool = False,
    window: int = -1,
    softcap: float = 0.0,
) -> torch.Tensor:
    """F.scaled_dot_product_attention (no dropout, GQA by index) with an optional sliding window
    and an optional logit softcap (softcap > 0: scores s -> softcap * tanh(s / softcap) before the mask).

    q, k and v are read in place through their strides (e.g. transposed (B, S, H, D) views);
    only a tensor whose last dimension is not unit-stride is copied. The mask is read through
    broadcasting strides, never expanded in memory; a float mask of another dtype than q is
    converted to q's dtype first. Returns a contiguous (B, Hq, Sq, Dv) tensor.
    """
    _check_inputs(q, k, v, attn_mask, scale, is_causal, window, softcap)
    runtime = tuned_runtime("attention", (q, k, v, attn_mask, scale, is_causal, window, softcap))
    if runtime is None:
        return attention_reference(q, k, v, attn_mask, scale, is_causal, window, softcap)
    return _run_metal(q, k, v, attn_mask, scale, is_causal, window, runtime, softcap)


@attention.register_fake
def _(q, k, v, attn_mask=None, scale=None, is_causal=False, window=-1, softcap=0.0):
    _check_inputs(q, k, v, attn_mask, scale, is_causal, window, softcap)
    return q.new_empty((q.shape[0], q.shape[1], q.shape[2], v.shape[3]))


def _setup(ctx, inputs, output):
    q, k, v, attn_mask, scale, is_causal, window, softcap = inputs
    ctx.save_for_backward(q, k, v, attn_mask)
    ctx.scale, ctx.is_causal, ctx.window, ctx.softcap = scale, is_causal, window, softcap


def _backward(ctx, grad):
    """Recomputes P = softmax(Q K^T * scale + mask) in fp32 (fp64 for fp64) and applies
    dV = P^T dO, dS = P * (dP - rowsum(dP * P)) with dP = dO V^T, dQ = dS K * scale,
    dK = dS^T Q * scale; K/V gradients are summed over each GQA group; an additive mask that
    requires grad (T5's learned position bias) gets dS summed to its broadcast shape. Hidden keys and
    fully hidden rows get P = 0, hence zero gradient. A softcap c (scores c * tanh(s / c)) multiplies
    dS on its way to Q and K by its derivative 1 - tanh(s / c)^2; the mask is added after it."""
    q, k, v, attn_mask = ctx.saved_tensors
    B, Hq, Sq, D = q.shape
    Hkv, Skv = k.shape[1], k.shape[2]
    group = Hq // Hkv if Hkv else 1
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    scale = softmax_scale(ctx.scale, D)
    qf, do = q.to(acc), grad.to(acc)
    kf = k.to(acc).repeat_interleave(group, dim=1)
    vf = v.to(acc).repeat_interleave(group, dim=1)
    p, t = _probabilities(q, k, attn_mask, ctx.scale, ctx.is_causal, ctx.window, ctx.softcap, acc)
    dp = do @ vf.transpose(-1, -2)
    ds = p * (dp - (dp * p).sum(-1, keepdim=True))
    dscore = ds if t is None else ds * (1 - t * t)  # the gradient of the scaled scores
    dq = dk = dv = dmask = None
    if ctx.needs_input_grad[0]:
        dq = (dscore @ kf * scale).to(q.dtype)
    if ctx.needs_input_grad[1]:
        dk = (dscore.transpose(-1, -2) @ qf * scale).view(B, Hkv, group, Skv, D).sum(2).to(k.dtype)
    if ctx.needs_input_grad[2]:
        dv = (p.transpose(-1, -2) @ do).view(B, Hkv, group, Skv, -1).sum(2).to(v.dtype)
    if attn_mask is not None and attn_mask.dtype != torch.bool and ctx.needs_input_grad[3]:
        dmask = ds.sum_to_size(attn_mask.shape).to(attn_mask.dtype)  # an additive mask is added to the scores
    return dq, dk, dv, dmask, None, None, None, None


attention.register_autograd(_backward, setup_context=_setup)
