"""The attention kernels' performance variants, each asserted to run (tests/helpers.py launched_variants)
and checked against F.scaled_dot_product_attention in float64 with NaN-poisoned outputs and scratch:

- attn_prefill with PREFILL_MATRIX: prefill on the matrix units (simdgroup_matrix) for head dims that are
  multiples of 8 (the scalar body, under the same kernel name, takes the others);
- attn_decode with DECODE_HEADS = group: one threadgroup per (KV head, partition) serves all the query
  heads of a GQA group, the keys split into enough partitions to fill a GPU.

Switching a variant off in the launch policy (prefill_matrix=False, decode_gqa=False) makes the test
named for it fail. Shapes are small: the emulator runs a 256-dim matrix prefill slowly.
"""

import pytest
import torch
from helpers import assert_close_dtype, launched_variants, op_tolerances, sdpa_reference

from mps_inductor_ext import config
from mps_inductor_ext.config import AttentionPolicy
from mps_inductor_ext.ops import attention as attention_mod
from mps_inductor_ext.ops.common import poisoned_outputs
from mps_inductor_ext.shaders.emulator.library import THREAD_LIMIT_VARIABLE

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
TOL = op_tolerances("attention")
op = torch.ops.mpsk.attention


def qkv(B, Hq, Hkv, Sq, Skv, D, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(B, h, s, D, generator=g).to(dtype) for h, s in ((Hq, Sq), (Hkv, Skv), (Hkv, Skv)))


def run(q, k, v, mask=None, causal=False, window=-1):
    with config.patch(emulate_metal=True), poisoned_outputs(), launched_variants() as seen:
        got = op(q, k, v, mask, None, causal, window)
    return got, seen


MATRIX = "attn_prefill+matrix"  # the prefill kernel specialized for the matrix units


def check(q, k, v, kernel, mask=None, causal=False, window=-1, ref_inputs=None):
    got, seen = run(q, k, v, mask, causal, window)
    name, _, matrix = kernel.partition("+")
    assert seen and seen[0].kernel.startswith(name), [s.kernel for s in seen]
    if name == "attn_prefill":
        assert seen[0].defines["PREFILL_MATRIX"] == ("1" if matrix else "0"), seen[0].defines
    assert_close_dtype(got, sdpa_reference(*(ref_inputs or (q, k, v)), mask, None, causal, window), TOL[q.dtype])
    return seen


# Head dim -> (Sq, Skv) for the causal case: two query blocks of 32 rows, the second partial; key tiles
# of 32 (D 64-96), 16 (128) or 8 (256) keys, the last partial; the tiles past a block's last row skipped.
MATRIX_CAUSAL = {64: (40, 50), 80: (36, 43), 96: (35, 41), 128: (34, 37), 256: (33, 20)}


@pytest.mark.parametrize("D", sorted(MATRIX_CAUSAL))
def test_matrix_prefill_head_dims_causal_gqa(D):
    """Causal with Sq != Skv and GQA 8:1 (fp32), 2:1 in fp16 and bf16."""
    Sq, Skv = MATRIX_CAUSAL[D]
    for dtype in DTYPES:
        Hq = 8 if dtype == torch.float32 else 2
        seen = check(*qkv(1, Hq, 1, Sq, Skv, D, dtype, seed=D), MATRIX, causal=True)
        assert seen[0].defines["BLOCK_Q"] == "32"


def test_matrix_prefill_skips_the_tiles_no_row_of_a_block_sees():
    """Causal, Sq < Skv: keys from 64 on are hidden from every query (rows 0..39), and the second block
    (rows 32..63) stops at key 63, so NaN there must never reach the output; with the causal tile skip
    switched off (is_causal=False with the same mask as a bool mask) those tiles are read and the NaN
    propagates through 0 * NaN in P V, which is what makes this test able to fail."""
    q, k, v = qkv(1, 2, 1, 40, 96, 64, torch.float32, seed=3)
    clean = (q, k.clone(), v.clone())
    k[:, :, 64:], v[:, :, 64:] = float("nan"), float("nan")
    clean[1][:, :, 64:], clean[2][:, :, 64:] = 0.0, 0.0
    check(q, k, v, MATRIX, causal=True, ref_inputs=clean)
    got, _ = run(q, k, v, torch.ones(40, 96, dtype=torch.bool).tril())
    assert got.isnan().any()  # the same visibility without the skip reads the poisoned tiles


def test_matrix_prefill_masks_and_window():
    """Bool and additive masks (per head, with fully hidden rows) and a window, D = 64, two blocks."""
    B, Hq, Hkv, Sq, Skv = 1, 4, 2, 37, 45
    g = torch.Generator().manual_seed(5)
    keep = torch.rand(B, Hq, Sq, Skv, generator=g) > 0.4
    keep[0, 1, 3] = False
    bias = torch.randn(Hq, 1, Skv, generator=g)
    bias[1, 0, ::3] = float("-inf")
    for dtype in DTYPES:
        q, k, v = qkv(B, Hq, Hkv, Sq, Skv, 64, dtype, seed=6)
        check(q, k, v, MATRIX, mask=keep, window=6)
    check(q, k, v, MATRIX, mask=bias.to(q.dtype), causal=True)
    got, _ = run(q, k, v, keep)
    assert (got[0, 1, 3] == 0).all()


def test_matrix_prefill_off_and_odd_head_dims_take_the_scalar_kernel():
    q, k, v = qkv(1, 2, 1, 20, 21, 64, torch.float32, seed=7)
    with config.patch(attention=AttentionPolicy(prefill_matrix=False)):
        assert check(q, k, v, "attn_prefill")[0].kernel == "attn_prefill_float"
    assert check(*qkv(1, 2, 1, 20, 21, 36, torch.float32, seed=8), "attn_prefill")[0].kernel == "attn_prefill_float"


@pytest.mark.parametrize("group", [4, 8])
def test_gqa_decode_serves_a_group_in_one_threadgroup(group):
    """Hq / Hkv query heads per threadgroup, grid y = Hkv; one and several query rows per head (up to
    32 rows of a threadgroup, in passes), causal, with per-head masks (the mask row changes with the
    head inside a threadgroup), split and unsplit."""
    Hkv = 2
    Hq = group * Hkv
    g = torch.Generator().manual_seed(group)
    for dtype in DTYPES:
        for Sq, Skv in ((1, 37), (3, 150), (4, 21)) if dtype == torch.float32 else ((3, 150),):
            q, k, v = qkv(2, Hq, Hkv, Sq, Skv, 64, dtype, seed=Sq)
            mask = torch.rand(2, Hq, Sq, Skv, generator=g) > 0.3
            seen = check(q, k, v, "attn_decode", mask=mask, causal=Sq == 4)
            assert seen[0].defines["DECODE_HEADS"] == str(group)
            assert seen[-1].kernel.startswith("attn_reduce" if Skv >= 128 else "attn_decode")
    bias = torch.randn(1, Hq, 1, 70, generator=g)
    check(*qkv(1, Hq, Hkv, 4, 70, 128, torch.float32, seed=9), "attn_decode", mask=bias, causal=True, window=2)


def test_gqa_decode_plan_fills_a_gpu_at_512_keys():
    """1 x 32 x 1 x 128 queries over 8 KV heads of 512 keys: 8 partitions of 64 keys per KV head,
    64 threadgroups of 8 SIMD-groups (512 SIMD-groups, 13.5 per core of a 38-core M2 Max); each
    threadgroup reads its 64 K/V rows once for its 4 query heads."""
    policy = AttentionPolicy()
    strides = ((32 * 128, 128, 128), (8 * 512 * 128, 512 * 128, 128), (8 * 512 * 128, 512 * 128, 128))
    plan = attention_mod.attention_plan(torch.float16, (1, 32, 8, 1, 512, 128, 128), strides,
                                        mask_kind=attention_mod.MASK_NONE, mask_strides=None, scale=0.1,
                                        is_causal=False, window=-1, policy=policy)
    partition, reduce = plan.launches
    assert partition.group_size == (256, 1, 1)
    assert partition.threads == (8 * 256, 8, 1)  # 8 partitions x 8 KV heads x batch 1
    assert partition.args[-1].value == 64  # keys per partition
    assert reduce.threads == (32 * 32,)
    assert [s.dtype for s in plan.scratch] == [torch.float32, torch.float32, torch.float16]


def test_decode_without_gqa_sharing_is_per_query_head():
    q, k, v = qkv(1, 8, 2, 1, 40, 64, torch.float32, seed=10)
    with config.patch(attention=AttentionPolicy(decode_gqa=False)):
        seen = check(q, k, v, "attn_decode")
    assert seen[0].defines["DECODE_HEADS"] == "1"


def test_groups_fit_a_low_thread_limit(monkeypatch):
    """A pipeline limit of 64 threads: two SIMD-groups per decode and prefill threadgroup."""
    monkeypatch.setenv(THREAD_LIMIT_VARIABLE, "64")
    q, k, v = qkv(1, 4, 1, 20, 90, 64, torch.float16, seed=11)
    seen = check(q, k, v, MATRIX, causal=True)
    assert seen[0].defines["PREFILL_SIMD"] == "2" and seen[0].defines["BLOCK_Q"] == "16"
    seen = check(q[:, :, :2], k, v, "attn_decode")
    assert seen[0].defines["DECODE_SIMD"] == "2"


@pytest.mark.slow  # builds the instrumented library
def test_gqa_decode_reads_k_and_v_once_per_group():
    """Device bytes counted on the emulator's instrumented build (shaders/emulator/counters.py), fp16
    GQA 4:1, one query row per head, 128 keys in two partitions: the partition kernel loads K and V
    once (plus the group's query rows once per partition), within 1.0-1.1x of the K/V bytes; the whole
    call (reduce included) within 1.1x of touching q, K, V and the output once. Without the sharing
    (decode_gqa=False) every query head reads K/V: 4x."""
    from mps_inductor_ext.shaders.emulator import counters

    Hkv, G, Skv, D = 1, 4, 128, 32
    q, k, v = qkv(1, Hkv * G, Hkv, 1, Skv, D, torch.float16, seed=12)
    kv_bytes = 2 * Hkv * Skv * D * 2
    ideal = kv_bytes + 2 * q.numel() * 2  # q in, the output (same shape) out
    for gqa, lo, hi in ((True, 1.0, 1.1), (False, 4.0, 4.4)):
        with config.patch(emulate_metal=True, attention=AttentionPolicy(decode_gqa=gqa)), \
                counters.record() as launches:
            got = op(q, k, v)
        assert_close_dtype(got, sdpa_reference(q, k, v), TOL[torch.float16])
        partition = launches[0]
        assert partition.kernel == "attn_decode_half" and partition.threads[0] == 2 * partition.group_size[0]
        assert lo <= partition.device.load_bytes / kv_bytes <= hi, (gqa, partition.device)
        if gqa:
            moved = sum(c.device.load_bytes + c.device.store_bytes for c in launches)
            assert moved <= 1.1 * ideal, [c.device for c in launches]
