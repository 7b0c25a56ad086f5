"""RoPE in the code Inductor generates for the `mps` device (fake tensors, codegen only): q and k
arrive as the usual (B, S, H, D) -> (B, H, S, D) transposes and the kernels read them through
their strides, so no copy kernel runs before the rope launch; q and k with the same tables are one
launch of rope_qk, whose k output Inductor allocates and the kernel fills."""

from __future__ import annotations

import pytest
import torch
from generated_code import cpp_launches, generate_for_mps, python_launches

from mps_inductor_ext import lowerings

F32 = torch.float32
B, S, HQ, HK, D = 2, 12, 4, 2, 16
SHAPES = [((B, S, HQ, D), F32), ((B, S, HK, D), F32), ((B, 1, S, D), F32), ((B, 1, S, D), F32)]


def _bhsd(t):
    return t.permute(0, 2, 1, 3)  # what HF's view(B, S, H, D).transpose(1, 2) traces to


def one_rope(q, k, cos, sin):
    return torch.ops.mpsk.rope(_bhsd(q), cos, sin)


def fused(q, k, cos, sin):
    q_out, k_out = torch.ops.mpsk.rope_qk(_bhsd(q), _bhsd(k), cos, sin)
    return q_out, k_out, k_out + 1  # a later reader of k_out


def _generate(fn, cpp):
    lowerings.install()
    try:
        return generate_for_mps(fn, SHAPES, cpp=cpp)
    finally:
        lowerings.uninstall()


@pytest.fixture(scope="module")
def code() -> dict:
    return {(fn.__name__, cpp): _generate(fn, cpp) for fn in (one_rope, fused) for cpp in (False, True)}


@pytest.mark.parametrize("cpp", [False, True], ids=["python", "cpp"])
@pytest.mark.parametrize("fn,kernel", [(one_rope, "rope_float"), (fused, "rope_qk_float")])
def test_strided_q_and_k_are_read_in_place(code, fn, kernel, cpp):
    """The rope launch is the first launch of the program (Inductor's own kernels, a copy among them,
    would be `generated_kernel_N` calls in Python and further run_command_blocks in C++), and it
    binds the graph inputs as the transposed views they are."""
    text = code[(fn.__name__, cpp)]
    launches = (cpp_launches if cpp else python_launches)(text)
    assert [launch.kernel for launch in launches] == [kernel]
    call = text[text.index("void AOTInductorModel::run_impl(" if cpp else "def call("):]
    block = "aoti_torch_mps_run_command_block(" if cpp else ".run_command_block("
    first_launch = call.index(block)
    assert call[first_launch + len(block):].startswith("mpsk_lib_") if cpp else \
        call[:first_launch].rsplit("\n", 1)[1].strip().startswith("mpsk_lib_")
    before = call[:first_launch]
    assert "generated_kernel" not in before and "copy_" not in before and "clone" not in before
    tensors = [value for _, kind, value in launches[0].args if kind == "tensor"]
    if not cpp:
        # q (and k) bound as reinterpretations of the (B, S, H, D) inputs with swapped strides
        assert f"reinterpret_tensor(q_1, ({B}, {HQ}, {S}, {D}), ({S * HQ * D}, {D}, {HQ * D}, 1), 0)" in tensors
        ints = [int(value) for _, kind, value in launches[0].args if kind == "int"]
        assert (S * HQ * D, D, HQ * D, 1) in {tuple(ints[i:i + 4]) for i in range(len(ints) - 3)}


def test_rope_qk_output_is_read_after_the_launch(code):
    """k's output is an Inductor buffer the rope_qk kernel writes: the later reader (an Inductor
    kernel computing k_out + 1) comes after the launch, not before."""
    text = code[("fused", False)]
    call = text[text.index("def call("):]
    launch = python_launches(text)[0]
    k_out = [value for i, kind, value in launch.args if kind == "tensor"][1]  # buffer 1 is k_out
    reader = call.index("generated_kernel_0(")
    assert call.index(".run_command_block(") < reader
    assert k_out in call[reader:call.index("\n", reader)]
