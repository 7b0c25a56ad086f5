"""Running the Metal that Inductor generates for the `mps` device, on the emulator.

No Mac runs here, so Inductor's MPS codegen is driven on fake `mps` tensors (as
`generated_code.py` does); the Python wrapper it writes is then executed as it would be
on a Mac, except that its buffers are CPU tensors and `compile_mps_shader` (the one call
through which Inductor compiles its Metal) compiles on the emulator. The wrapper's own
launches (`generated_kernel_N(out, in..., sizes..., threads=[...], group_size=[...])`)
reach the emulated kernels unchanged.
"""

from __future__ import annotations

import contextlib
import re
import types

import torch
from torch._dynamo.source import ConstantSource
from torch._inductor.debug import DebugContext
from torch._inductor.decomposition import select_decomp_table
from torch._inductor.graph import GraphLowering
from torch._inductor.runtime import runtime_utils
from torch._inductor.virtualized import V
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.proxy_tensor import make_fx
from torch.fx.experimental.symbolic_shapes import DimDynamic, ShapeEnv

from mps_inductor_ext.shaders import compile_shader

# torch.backends.mps.get_core_count is absent in the CPU build, and Inductor's split
# reductions depend on it: pin the GPU core count of a named Mac (Apple M1, 8-core GPU).
MAC_GPU_CORES = 8


@contextlib.contextmanager
def mac_core_count(cores: int = MAC_GPU_CORES):
    had = hasattr(torch.backends.mps, "get_core_count")
    old = getattr(torch.backends.mps, "get_core_count", None)
    torch.backends.mps.get_core_count = lambda: cores
    try:
        yield
    finally:
        if had:
            torch.backends.mps.get_core_count = old
        else:
            del torch.backends.mps.get_core_count


def generate_mps_wrapper(fn, args: list[torch.Tensor], dynamic: bool = False) -> str:
    """Inductor's Python wrapper for `fn` on `mps` tensors shaped like `args` (codegen only).

    With `dynamic`, every dimension of size > 1 is symbolic, as under torch.compile(dynamic=True).
    """
    shape_env = ShapeEnv() if dynamic else None
    mode = FakeTensorMode(shape_env=shape_env)

    def size(n: int, name: str):
        if not dynamic or n <= 1:
            return n
        sym = shape_env.create_symbol(n, ConstantSource(name), dynamic_dim=DimDynamic.DYNAMIC)
        return shape_env.create_symintnode(sym, hint=n)

    with mac_core_count():
        with mode:
            fakes = [
                torch.empty([size(n, f"a{k}_{d}") for d, n in enumerate(a.shape)], dtype=a.dtype, device="mps")
                for k, a in enumerate(args)
            ]
            gm = make_fx(fn, decomposition_table=select_decomp_table(),
                         tracing_mode="symbolic" if dynamic else "real")(*fakes)
        inputs = [n.meta["val"] for n in gm.graph.nodes if n.op == "placeholder"]
        fake_mode = inputs[0].fake_mode if dynamic else mode
        with V.set_fake_mode(fake_mode), DebugContext():
            graph = GraphLowering(gm, example_inputs=inputs, shape_env=fake_mode.shape_env)
            with V.set_graph_handler(graph):
                graph.run(*inputs)
                code = graph.codegen()
    return code[0].value if isinstance(code, tuple) else code.value


def _emulated_compile(source: str):
    """Stands in for runtime_utils.compile_mps_shader: the same source, on the emulator."""
    return compile_shader(source, backend="cpu")


def run_mps_wrapper(code: str, args: list[torch.Tensor]):
    """Executes a generated `mps` wrapper on CPU tensors, its Metal kernels on the emulator."""
    code = code.replace("device='mps'", "device='cpu'").replace("device='mps:0'", "device='cpu'")
    module = types.ModuleType("inductor_mps_wrapper")
    original = runtime_utils.compile_mps_shader
    runtime_utils.compile_mps_shader = _emulated_compile
    try:
        exec(compile(code, "<inductor mps wrapper>", "exec"), module.__dict__)
    finally:
        runtime_utils.compile_mps_shader = original
    return module.call(list(args))  # the wrapper empties the list it is given


def metal_kernels(code: str) -> list[str]:
    """The names of the Metal kernels a wrapper compiles."""
    return re.findall(r"async_compile\.metal\('(\w+)'", code)
