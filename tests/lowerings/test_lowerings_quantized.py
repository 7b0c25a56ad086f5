"""mpsk::quantized_linear lowered by Inductor: the generated Python and C++ wrappers launch the
matvec kernel themselves (run here on the emulator), and the code generated for a Mac's `mps`
device binds what the kernel's signature and the op's launch plan say."""

from __future__ import annotations

import pytest
import torch
from generated_code import cpp_launches, generate_for_mps, python_launches
from helpers import TOLERANCES
from test_lowerings import counting_backend, fresh_dynamo, kernel_calls  # noqa: F401  (autouse fixture)
from torch import nn
from torch._inductor.utils import run_and_get_code

import mps_inductor_ext as mpsk
from mps_inductor_ext import lowerings
from mps_inductor_ext.ops import quantized
from mps_inductor_ext.ops.launch import IntArg, TensorArg
from mps_inductor_ext.shaders import ShaderLibrary

TOL = TOLERANCES[torch.float32]


def model() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 96), nn.SiLU(), nn.Linear(96, 32, bias=False))
    return mpsk.quantize(net, group_size=32)


@pytest.mark.parametrize("cpp", [False, True], ids=["python", "cpp"])
def test_wrappers_launch_the_kernel(cpp):
    net, x = model(), torch.randn(2, 3, 64)
    options = {"cpp_wrapper": True} if cpp else {}
    with mpsk.config.patch(emulate_metal=True), torch.no_grad(), kernel_calls() as calls:
        got, codes = run_and_get_code(torch.compile(net, backend="mpsk", options=options), x)
        ref = net(x)
    code = "\n".join(codes)
    assert mpsk.counters == {"quantized_linear": 2}
    assert calls["run_plan"] == 0  # no eager op call: the wrapper drives the kernel
    assert calls["dispatch"] == {"quantized_matvec_float": 2}
    assert "mpsk::" not in code and "torch.ops.mpsk." not in code
    if cpp:
        assert code.count("aoti_torch_mps_run_command_block(mpsk_lib_") == 2
    else:
        assert code.count(".get_kernel_function('quantized_matvec_float')") == 2
    torch.testing.assert_close(got, ref, rtol=TOL, atol=TOL)


def test_dynamic_rows_are_decided_once_per_side():
    """A symbolic row count is decided against matvec_max_rows at compile time and guarded: row
    counts on the same side share one compilation (the matvec on blocks of 8 rows, or the matmul),
    the other side compiles once more (Dynamo specializes a size of 1, so decode here is 2 rows)."""
    net = model()
    backend, compiled = counting_backend()
    fn = torch.compile(net, backend=backend)
    with mpsk.config.patch(emulate_metal=True), torch.no_grad(), kernel_calls() as calls:
        for rows in (5, 2, 8, 11, 40):
            x = torch.randn(rows, 64)
            torch._dynamo.mark_dynamic(x, 0)
            torch.testing.assert_close(fn(x), net(x), rtol=TOL, atol=TOL)
    assert len(compiled) == 2
    assert calls["run_plan"] == 0
    assert calls["dispatch"] == {"quantized_matvec_float": 6, "quantized_matmul_float": 4}


F32, I32 = torch.float32, torch.int32
SHAPES = [((3, 5, 128), F32), ((40, 16), I32), ((40, 2), F32), ((40, 2), F32), ((40,), F32),  # 4-bit, g64
          ((24, 32), I32), ((24, 4), F32), ((24, 4), F32)]  # 8-bit, g32


def ops(x, w4, s4, b4, bias, w8, s8, b8):
    return (torch.ops.mpsk.quantized_linear(x, w4, s4, b4, 64, 4, bias),
            torch.ops.mpsk.quantized_linear(x.select(0, 0).narrow(0, 0, 2), w8, s8, b8, 32, 8))  # no x[i] on fake mps


@pytest.fixture(scope="module")
def launches() -> dict[str, list]:
    lowerings.install()
    try:
        return {kind: (python_launches if kind == "python" else cpp_launches)(
            generate_for_mps(ops, SHAPES, cpp=kind == "cpp")) for kind in ("python", "cpp")}
    finally:
        lowerings.uninstall()


@pytest.mark.parametrize("wrapper", ["python", "cpp"])
def test_mps_code_binds_the_plan_and_the_signature(launches, wrapper):
    policy = mpsk.config.quantized
    plans = [quantized.quantized_linear_plan(F32, 15, 40, 128, (128, 1), group_size=64, bits=4, has_bias=True,
                                             policy=policy),
             quantized.quantized_linear_plan(F32, 2, 24, 128, (128, 1), group_size=32, bits=8, has_bias=False,
                                             policy=policy)]
    got = launches[wrapper]  # 15 rows: the matmul; 2 rows: the matvec
    assert sorted(launch.kernel for launch in got) == ["quantized_matmul_float", "quantized_matvec_float"]
    by_source = {plan.launches[0].source: plan.launches[0] for plan in plans}
    assert sorted(launch.source for launch in got) == sorted(by_source)  # BITS, GROUP_SIZE, ROWS, HAS_BIAS
    for launch in got:
        expected = by_source[launch.source]
        kernel = getattr(ShaderLibrary(launch.source, "cpu"), launch.kernel)
        signature = [(p.index, "tensor" if p.is_pointer else "int") for p in kernel.buffers]
        assert [(i, kind) for i, kind, _ in launch.args] == signature
        assert [kind for _, kind, _ in launch.args] == [
            "tensor" if isinstance(a, TensorArg) else "int" for a in expected.args]
        assert [v for _, kind, v in launch.args if kind == "int"] == [
            str(a.value) for a in expected.args if isinstance(a, IntArg)]
        assert launch.threads == [str(t) for t in expected.threads]
        assert launch.group_size == [str(g) for g in expected.group_size]
