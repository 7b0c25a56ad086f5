"""The graph of test_lowerings_mps_codegen.py, whose generated code is checked there on fake tensors,
run here: compiled for the emulated mps device, its Python wrapper launches the mpsk kernels through
the `mps` shader backend, and every output matches the ops' reference implementation on the CPU."""

from __future__ import annotations

import pytest
import torch
from helpers import TOLERANCES
from test_lowerings_mps_codegen import POLICY, SHAPES, expected_plans, model
from torch._inductor.utils import run_and_get_code

import mps_inductor_ext as mpsk

TOL = TOLERANCES[torch.float32]


def make_inputs() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    out = []
    for shape, dtype in SHAPES:
        if dtype == torch.bool:  # a random mask that keeps the diagonal, so no query row is fully masked
            out.append((torch.rand(shape, generator=g) > 0.4) | torch.eye(*shape, dtype=torch.bool))
        else:
            out.append(torch.randn(shape, generator=g, dtype=dtype))
    return out


@pytest.fixture(scope="module")
def results():
    cpu = make_inputs()
    with mpsk.config.patch(attention=POLICY):
        expected = model(*cpu)  # the ops' CPU implementation (ATen math), not a Metal kernel
        torch._dynamo.reset()
        compiled = torch.compile(model, backend="mpsk", fullgraph=True)
        args = [t.to("mps") for t in cpu]
        _, (code,) = run_and_get_code(compiled, *args)
        with mpsk.count_launches() as launches:
            got = compiled(*args)
    return expected, got, launches, code


def test_every_output_matches_the_reference(results):
    expected, got, _, _ = results
    assert len(got) == len(expected) == 6
    for i, (g, e) in enumerate(zip(got, expected, strict=True)):
        assert g.device.type == "mps", i
        torch.testing.assert_close(g.cpu(), e, rtol=TOL, atol=TOL, msg=lambda m, i=i: f"output {i}: {m}")


def test_each_launch_of_the_plans_ran_once_from_the_generated_wrapper(results):
    _, _, launches, code = results
    assert launches.mpsk_kernels == len(expected_plans()), launches.summary()
    # Launched by the code Inductor wrote for the mps device, not by the ops run eagerly.
    assert code.count(".run_command_block(") == len(expected_plans())
    assert code.count(", 'mps', strict=True)") == len({launch.source for launch in expected_plans().values()})


@pytest.mark.slow
def test_the_cpp_wrapper_runs_as_an_aoti_package(results, tmp_path):
    """The same graph through AOTInductor: its C++ wrapper's launches (the AOTI MPS shim calls the
    codegen test compiles) run on the device and give the same outputs."""
    expected, _, _, _ = results
    args = [t.to("mps") for t in make_inputs()]

    class Graph(torch.nn.Module):
        def forward(self, *a):
            return model(*a)

    with mpsk.config.patch(attention=POLICY):
        path = mpsk.aoti_compile_and_package(Graph(), tuple(args), tmp_path / "codegen.pt2")
    with mpsk.count_launches() as launches:
        got = mpsk.aoti_load_package(path)(*args)
    assert launches.mpsk_kernels == len(expected_plans()), launches.summary()
    for i, (g, e) in enumerate(zip(got, expected, strict=True)):
        torch.testing.assert_close(g.cpu(), e, rtol=TOL, atol=TOL, msg=lambda m, i=i: f"output {i}: {m}")
