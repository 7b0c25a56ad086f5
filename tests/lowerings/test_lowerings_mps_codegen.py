"""The code Inductor generates for the mpsk ops on the `mps` device, in both wrappers.

No Mac runs here, so the graph is lowered on fake MPS tensors and only the code is generated
(tests/generated_code.py). The launches are read back out of that text and checked against
three independent things: the kernel's own signature (the emulator parses the very source the
wrapper embeds, so buffer indices and pointer-or-`constant long&` kinds come from the Metal
code), the op's launch plan (grid and group size), and the other wrapper (Python and C++ bind
the same launches). The C++ call sites and library definitions must compile against torch's
shim headers, and call no Python fallback.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import torch
from generated_code import cpp_launches, generate_for_mps, python_launches

import mps_inductor_ext as mpsk
from mps_inductor_ext import lowerings
from mps_inductor_ext.aoti import emulated_shim
from mps_inductor_ext.config import AttentionPolicy
from mps_inductor_ext.ops import attention, norm, rope, softmax
from mps_inductor_ext.ops.launch import IntArg, TensorArg
from mps_inductor_ext.shaders import ShaderLibrary

F32, BOOL = torch.float32, torch.bool
B, H, HKV, S, D = 2, 4, 2, 12, 16
SKV_LONG = 80  # above the policy's split_kv_above below: the decode kernel splits the keys
POLICY = AttentionPolicy(split_kv_above=32, partition_size=32)
SHAPES = [
    ((3, S, 64), F32), ((64,), F32), ((64,), F32),  # x, weight, bias
    ((B, H, S, D), F32), ((B, HKV, S, D), F32), ((B, HKV, S, D), F32), ((S, S), BOOL),  # q, k, v, mask
    ((B, H, 1, D), F32), ((B, HKV, SKV_LONG, D), F32), ((B, HKV, SKV_LONG, D), F32),  # decode q, k, v
    ((1, 1, S, D), F32), ((1, 1, S, D), F32),  # cos, sin
]


def model(x, w, b, q, k, v, mask, dq, dk, dv, cos, sin):
    mpsk_ops = torch.ops.mpsk
    return (
        mpsk_ops.rms_norm(x, w, 1e-6),
        mpsk_ops.layer_norm(x, w, b, 1e-5),
        mpsk_ops.softmax(x, 1),
        mpsk_ops.rope(q, cos, sin),
        mpsk_ops.attention(q, k, v, mask, None, True),
        mpsk_ops.attention(dq, dk, dv, None, 0.5),
    )


def expected_plans() -> dict[str, object]:
    """Each kernel's launch as the ops' plan builders describe it for these shapes (graph inputs are
    never assumed 4-aligned, so no vector loads)."""
    common = dict(vector_ok=False, policy=mpsk.config.norm)
    rms = norm.norm_plan("rms_norm", F32, 3 * S, 64, 64, 64, has_weight=True, has_bias=False, eps=1e-6, **common)
    ln = norm.norm_plan("layer_norm", F32, 3 * S, 64, 64, 64, has_weight=True, has_bias=True, eps=1e-5, **common)
    sm = softmax.softmax_plan(F32, 3, S, 64, (S * 64, 64, 1), (S * 64, 64, 1), log=False, vector_ok=False,
                              policy=mpsk.config.softmax)
    rp = rope.rope_plan(F32, (B, H, S, D), D, (H * S * D, S * D, D, 1), (0, 0, D, 1), (0, 0, D, 1),
                        interleaved=False, policy=mpsk.config.rope)
    strides = lambda h, s: (h * s * D, s * D, D)  # noqa: E731
    prefill = attention.attention_plan(
        F32, (B, H, HKV, S, S, D, D), (strides(H, S), strides(HKV, S), strides(HKV, S)),
        mask_kind=attention.MASK_BOOL, mask_strides=(0, 0, S, 1), scale=D**-0.5, is_causal=True, window=-1,
        policy=POLICY)
    decode = attention.attention_plan(
        F32, (B, H, HKV, 1, SKV_LONG, D, D), (strides(H, 1), strides(HKV, SKV_LONG), strides(HKV, SKV_LONG)),
        mask_kind=attention.MASK_NONE, mask_strides=None, scale=0.5, is_causal=False, window=-1, policy=POLICY)
    launches = [launch for plan in (rms, ln, sm, rp, prefill, decode) for launch in plan.launches]
    return {launch.kernel: launch for launch in launches}


@pytest.fixture(scope="module")
def code() -> dict[str, str]:
    lowerings.install()
    try:
        with mpsk.config.patch(attention=POLICY):
            return {kind: generate_for_mps(model, SHAPES, cpp=kind == "cpp") for kind in ("python", "cpp")}
    finally:
        lowerings.uninstall()


@pytest.fixture(scope="module")
def launches(code) -> dict[str, list]:
    return {"python": python_launches(code["python"]), "cpp": cpp_launches(code["cpp"])}


KERNELS = ["rms_norm_float", "layer_norm_float", "softmax_float", "rope_float", "attn_prefill_float",
           "attn_decode_float", "attn_reduce_float"]


@pytest.mark.parametrize("wrapper", ["python", "cpp"])
def test_every_op_is_launched_directly(code, launches, wrapper):
    assert sorted(launch.kernel for launch in launches[wrapper]) == sorted(KERNELS)
    assert "mpsk." not in code[wrapper].replace("mps_inductor_ext", "")  # no call of a torch.ops.mpsk op
    assert "mpsk::" not in code[wrapper]
    assert "proxy_executor_call_function" not in code[wrapper]


@pytest.mark.parametrize("wrapper", ["python", "cpp"])
def test_arguments_match_the_kernel_signature(launches, wrapper):
    """Buffer indices and kinds from the Metal source the wrapper embeds, parsed by the emulator."""
    for launch in launches[wrapper]:
        kernel = getattr(ShaderLibrary(launch.source, "cpu"), launch.kernel)
        signature = [(p.index, "tensor" if p.is_pointer else "int") for p in kernel.buffers]
        assert [(i, kind) for i, kind, _ in launch.args] == signature, launch.kernel
        for p in kernel.buffers:
            if not p.is_pointer:
                assert p.type_name == "long", (launch.kernel, p)  # set_arg_int binds int64


@pytest.mark.parametrize("wrapper", ["python", "cpp"])
def test_ints_and_dispatch_follow_the_launch_plan(launches, wrapper):
    plans = expected_plans()
    for launch in launches[wrapper]:
        plan = plans[launch.kernel]
        assert [kind for _, kind, _ in launch.args] == [
            "tensor" if isinstance(a, TensorArg) else "int" for a in plan.args
        ], launch.kernel
        ints = [value for _, kind, value in launch.args if kind == "int"]
        assert ints == [str(a.value) for a in plan.args if isinstance(a, IntArg)], launch.kernel
        assert launch.threads == [str(t) for t in plan.threads], launch.kernel
        assert launch.group_size == [str(g) for g in plan.group_size], launch.kernel


def test_both_wrappers_bind_the_same_launches(launches):
    def shape(launch):
        return (launch.kernel, launch.source, [(i, k, v if k == "int" else None) for i, k, v in launch.args],
                launch.threads, launch.group_size)

    by_kernel = {w: sorted(map(shape, launches[w])) for w in ("python", "cpp")}
    assert by_kernel["python"] == by_kernel["cpp"]


def test_python_wrapper_compiles(code):
    compile(code["python"], "<mps wrapper>", "exec")


def _cpp_call_sites(code: str) -> list[str]:
    """Each mpsk op's C++ scope (`{ ... }` around its launches) in the generated run_impl."""
    lines, sites, i = code.splitlines(), [], 0
    while i < len(lines):
        m = re.fullmatch(r"(\s*)\{", lines[i])
        if m:
            end = lines.index(f"{m.group(1)}}}", i + 1)
            body = "\n".join(lines[i:end + 1])
            if "aoti_torch_mps_run_command_block(mpsk_lib_" in body:
                sites.append(body)
            i = end
        i += 1
    return sites


def test_cpp_call_sites_and_definitions_compile(code, tmp_path):
    """A translation unit of what the mpsk writer emitted (library and kernel getters, and every call
    site as a function of the tensors it names) compiles against torch's shim headers."""
    cpp = code["cpp"]
    definitions = re.findall(r'^static const char\* mpsk_lib_\d+_source = R"MPSK\(.*?\)MPSK";\n.*?^\}$', cpp,
                             re.M | re.S)
    definitions += re.findall(r"^static AOTIMetalKernelFunctionHandle mpsk_lib_\w+\(\) \{.*?^\}$", cpp, re.M | re.S)
    assert len(definitions) == len({launch.source for launch in cpp_launches(cpp)}) + len(KERNELS)
    functions = []
    for n, site in enumerate(_cpp_call_sites(cpp)):
        declared = set(re.findall(r"RAIIAtenTensorHandle (\w+)\(", site))
        used = set(re.findall(r"aoti_torch_mps_set_arg_tensor\(handle, \d+, (\w+)\)", site))
        used |= set(re.findall(r"aoti_torch_mps_view_dtype\((\w+),", site))
        params = ", ".join(f"AtenTensorHandle {name}" for name in sorted(used - declared))
        functions.append(f"void call_{n}({params}, int32_t device_idx) "
                         + site.strip().replace("this->device_idx_", "device_idx"))
    assert len(functions) == 6
    caches = re.findall(r"^CACHE_TORCH_\w+\(\w+\);$", cpp, re.M)
    unit = "\n".join([
        "#include <functional>",
        "#include <memory>",
        "#include <torch/csrc/inductor/aoti_runtime/utils.h>",
        "#include <torch/csrc/inductor/aoti_torch/generated/c_shim_mps.h>",
        "#include <torch/csrc/inductor/aoti_torch/c/shim_mps.h>",
        "using namespace torch::aot_inductor;",
        *caches, *definitions, *functions,
    ])
    src = tmp_path / "mpsk_sites.cpp"
    src.write_text(unit)
    proc = subprocess.run(["g++", "-std=c++17", "-fsyntax-only", "-Wall", "-Werror", "-isystem",
                           str(emulated_shim.TORCH_INCLUDE), str(src)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert Path(src).read_text().count("aoti_torch_mps_run_command_block") == len(KERNELS)
