"""`MetalKernel`: an Inductor IR node that renders one mpsk op's LaunchPlan into the Python wrapper.

The op's plan builder (ops/*.py) stays the only place launch logic lives; this node only
renders the plan it produced, the same way `ops.launch.run_plan` drives the shader runtime:
module-level `ShaderLibrary(source, backend)` / `get_kernel_function(name)` once per distinct
source and kernel (as Inductor's own MPS kernels define their libraries in the header), and
at the call site `fn.run_command_block(block)` where `block` does start_encoding /
set_arg_tensor / set_arg_int / dispatch. Sizes may be sympy expressions over the graph's
size symbols; they are printed with the wrapper's expression printer.

The output is allocated by Inductor itself (an ExternKernelOut-style node with a FixedLayout
matching the op's fake implementation), so memory planning and buffer reuse treat it like any
other extern kernel's output.
"""

from __future__ import annotations

from collections.abc import Mapping

import sympy
import torch
from torch._inductor import ir
from torch._inductor.virtualized import V
from torch.utils._sympy.functions import FloorDiv

from ..ops.launch import IntArg, LaunchPlan, TensorArg

# Per wrapper: (backend, source) -> library variable, (library variable, kernel) -> function variable.
_LIBS_ATTR = "_mpsk_metal_libraries"


def _ceiling_to_floordiv(expr: sympy.Expr) -> sympy.Expr:
    """ceiling(n / d) -> (n + d - 1) // d, so generated code does integer math, never float division."""

    def rewrite(arg):
        num, den = sympy.fraction(sympy.together(arg))
        return FloorDiv(num + den - 1, den)

    return expr.replace(sympy.ceiling, rewrite)


def normalize(value, substitutions: Mapping[sympy.Symbol, sympy.Expr]) -> sympy.Expr:
    """A plan size as an integer sympy expression over the graph's size symbols."""
    expr = sympy.sympify(value)
    if substitutions:
        expr = expr.xreplace(dict(substitutions))
    return V.graph.sizevars.simplify(_ceiling_to_floordiv(expr))


class MetalKernel(ir.ExternKernelOut):
    """One mpsk op call lowered to Metal kernel launches described by `plan`.

    `tensors` maps each plan tensor name to an index into `inputs` and a Python suffix applied
    at the call site (".view(torch.uint8)" for a bool mask, as the eager op binds it); the
    name "out" is this node's own buffer. `substitutions` maps stand-in symbols the lowering
    gave the plan builder back to the graph's size expressions (see ops.attention lowering).
    """

    def __init__(
        self,
        layout: ir.Layout,
        inputs: list[ir.IRNode],
        *,
        plan: LaunchPlan,
        tensors: Mapping[str, tuple[int, str]],
        backend: str,
        op: torch._ops.OpOverload,
        substitutions: Mapping[sympy.Symbol, sympy.Expr] | None = None,
    ) -> None:
        super().__init__(layout, inputs, python_kernel_name=f"mpsk_metal.{op._opname}", op_overload=op)
        self.plan = plan
        self.tensors = dict(tensors)
        self.backend = backend
        self.substitutions = dict(substitutions or {})

    def _size(self, wrapper, value) -> str:
        return wrapper.codegen_python_sizevar(normalize(value, self.substitutions))

    def _tensor(self, name: str, scratch: Mapping[str, str]) -> str:
        if name == "out":
            return self.get_name()
        if name in scratch:
            return scratch[name]
        index, suffix = self.tensors[name]
        return self.inputs[index].codegen_reference() + suffix

    @staticmethod
    def _function(wrapper, source: str, kernel: str, backend: str) -> str:
        """The module-level kernel function variable, defining library and function once per wrapper."""
        libs, fns = wrapper.__dict__.setdefault(_LIBS_ATTR, ({}, {}))
        wrapper.add_import_once("from mps_inductor_ext.shaders import ShaderLibrary")
        lib = libs.get((backend, source))
        if lib is None:
            lib = libs[(backend, source)] = f"mpsk_lib_{len(libs)}"
            # A raw triple-quoted string keeps the Metal source readable (and its macros' line
            # continuations intact); repr is the fallback for a source that contains the quotes.
            text = f"r'''{source}'''" if "'''" not in source and not source.endswith("\\") else repr(source)
            wrapper.header.writeline(f"{lib} = ShaderLibrary({text}, {backend!r})")
        fn = fns.get((lib, kernel))
        if fn is None:
            fn = fns[(lib, kernel)] = f"{lib}_{kernel}"
            wrapper.header.writeline(f"{fn} = {lib}.get_kernel_function({kernel!r})")
        return fn

    def codegen(self, wrapper) -> None:
        if V.graph.cpp_wrapper:  # the lowering never builds this node then; see ops.lower_or_fallback
            raise NotImplementedError("mpsk: MetalKernel has no C++ (AOTInductor) wrapper codegen yet")
        self.codegen_comment(wrapper)
        device = self.get_device()
        scratch = {s.name: f"{self.get_name()}_{s.name}" for s in self.plan.scratch}
        for s in self.plan.scratch:
            shape = wrapper.codegen_python_shape_tuple([normalize(d, self.substitutions) for d in s.shape])
            wrapper.writeline(f"{scratch[s.name]} = torch.empty({shape}, dtype={s.dtype}, device='{device}')")
        for i, launch in enumerate(self.plan.launches):
            fn = self._function(wrapper, launch.source, launch.kernel, self.backend)
            block = f"{self.get_name()}_block{i}"
            wrapper.writeline(f"def {block}():")
            wrapper.writeline(f"    {fn}.start_encoding()")
            for idx, arg in enumerate(launch.args):
                if isinstance(arg, TensorArg):
                    wrapper.writeline(f"    {fn}.set_arg_tensor({idx}, {self._tensor(arg.name, scratch)})")
                else:
                    assert isinstance(arg, IntArg)
                    wrapper.writeline(f"    {fn}.set_arg_int({idx}, {self._size(wrapper, arg.value)})")
            threads = ", ".join(self._size(wrapper, t) for t in launch.threads)
            group = ", ".join(self._size(wrapper, g) for g in launch.group_size)
            wrapper.writeline(f"    {fn}.dispatch([{threads}], [{group}])")
            wrapper.writeline(f"{fn}.run_command_block({block})")
        if scratch:
            wrapper.writeline(f"del {', '.join(scratch.values())}")
