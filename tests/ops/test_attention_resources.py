"""What the attention kernels ask of an Apple GPU beyond correctness: threadgroup memory with headroom
below the 32 KiB limit (Metal may lay it out with padding), and a decode kernel whose per-lane state
stays in registers at head dim 256, whatever decode_max_q (Apple GPUs spill past roughly 64 floats)."""

import re
import subprocess
import tempfile
from pathlib import Path

import pytest
import torch

from mps_inductor_ext import config
from mps_inductor_ext.config import AttentionPolicy
from mps_inductor_ext.ops import attention as attention_mod
from mps_inductor_ext.ops.attention import MASK_NONE, attention_plan
from mps_inductor_ext.ops.common import poisoned_outputs
from mps_inductor_ext.shaders import ShaderLibrary
from mps_inductor_ext.shaders.emulator import toolchain

TG_LIMIT = 32 * 1024
HEADROOM = 1024
LANE_FLOATS = 64  # per-lane arrays a kernel may keep live


def plan(D, Dv=None, Sq=1, Skv=40, policy=None):
    Dv = D if Dv is None else Dv
    policy = policy or AttentionPolicy()
    strides = ((Skv * D, Skv * D, D),) * 3
    return attention_plan(torch.float16, (1, 1, 1, Sq, Skv, D, Dv), strides, mask_kind=MASK_NONE, mask_strides=None,
                          scale=0.1, is_causal=False, window=-1, policy=policy)


def preprocessed(source: str) -> str:
    """The specialized source after Metal's preprocessor (the emulator's clang, as -E)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "k.metal"
        path.write_text(source)
        stub = toolchain.INCLUDE_DIR / "stub"
        return subprocess.run([toolchain.zig_executable(), "c++", *toolchain.PREPROCESS_FLAGS, "-P", "-I", str(stub),
                               str(path)], capture_output=True, text=True, check=True).stdout


def lane_arrays(source: str, kernel: str) -> dict[str, int]:
    """The float arrays a kernel body declares in thread memory (not threadgroup), by name: elements."""
    text = preprocessed(source)
    body = text[text.index(f"kernel void {kernel}("):]
    body = body[:body.index("\ntemplate")] if "\ntemplate" in body else body
    arrays = {}
    for decl in re.finditer(r"(?<!threadgroup )\bfloat (\w+(?:\[[^\]]+\])+(?:\s*,\s*\w+(?:\[[^\]]+\])+)*);", body):
        for name, dims in re.findall(r"(\w+)((?:\[[^\]]+\])+)", decl.group(1)):
            n = 1
            for dim in re.findall(r"\[([^\]]+)\]", dims):
                n *= eval(dim.replace("/", "//"), {})  # noqa: S307  (C integer constant expressions)
            arrays[name] = n
    return arrays


@pytest.mark.parametrize("D", range(1, 257))
def test_prefill_tiles_leave_headroom(D):
    """Head dims 93-95, 160-165 and 244-251 used to leave under 1 KiB (165: exactly 32768 bytes)."""
    assert attention_mod.prefill_tiles(D, D, AttentionPolicy())[2] <= TG_LIMIT - HEADROOM


@pytest.mark.parametrize("D", [95, 165, 251])
def test_the_compiled_prefill_kernel_uses_what_was_budgeted(D):
    launch = plan(D, Sq=20).launches[0]
    fn = ShaderLibrary(launch.source, "cpu").get_kernel_function(launch.kernel)
    assert fn.static_thread_group_memory_length == attention_mod.prefill_tiles(D, D, AttentionPolicy())[2]
    assert fn.static_thread_group_memory_length <= TG_LIMIT - HEADROOM


@pytest.mark.parametrize("max_q", [1, 4, 8])
def test_decode_threadgroup_memory_leaves_headroom(max_q):
    policy = AttentionPolicy(decode_max_q=max_q)
    for D in (64, 128, 256):
        launch = plan(D, Sq=max_q, policy=policy).launches[0]
        fn = ShaderLibrary(launch.source, "cpu").get_kernel_function(launch.kernel)
        assert fn.static_thread_group_memory_length <= TG_LIMIT - HEADROOM


@pytest.mark.parametrize("max_q", [4, 8])
def test_decode_keeps_its_lane_state_bounded_at_head_dim_256(max_q):
    """The decode kernel held every query row (and k and v) in registers: 88 floats a lane at head dim
    256, 150 at decode_max_q=8."""
    launch = plan(256, Sq=max_q, policy=AttentionPolicy(decode_max_q=max_q)).launches[0]
    arrays = lane_arrays(launch.source, "attn_decode")
    assert arrays and sum(arrays.values()) <= LANE_FLOATS, arrays


@pytest.mark.parametrize("split", [False, True])
def test_decode_at_head_dim_256_with_eight_query_rows(split):
    """Two passes over the keys (rows 0-3, then 4-6), causal and GQA, against PyTorch; the old kernel
    could not be built here (33024 bytes of threadgroup memory)."""
    policy = AttentionPolicy(decode_max_q=8, split_kv_above=64 if split else 1024, partition_size=32)
    g = torch.Generator().manual_seed(7)
    q = torch.randn(1, 4, 7, 256, generator=g).half()
    k, v = torch.randn(1, 2, 90, 256, generator=g).half(), torch.randn(1, 2, 90, 256, generator=g).half()
    with config.patch(emulate_metal=True, attention=policy), poisoned_outputs():
        got = torch.ops.mpsk.attention(q, k, v, None, None, True)
    mask = torch.ones(7, 90, dtype=torch.bool).tril()
    ref = torch.nn.functional.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=mask,
                                                           enable_gqa=True)
    torch.testing.assert_close(got.double(), ref, rtol=2e-3, atol=2e-3)
