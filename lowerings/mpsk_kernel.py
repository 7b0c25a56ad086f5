"""`MpskKernel`: an Inductor IR node that renders one mpsk op's launch into generated code.

(Not to be confused with Inductor's own `MetalKernel` in codegen/mps.py, the kernels Inductor
writes itself.) The op's launch function (`ops/<op>.py`, `<name>_launch`) stays the only place
launch logic lives; this node only renders the plan it produced, the way `ops.launch.run_plan`
drives the shader runtime, into either wrapper:

- Python: module-level `ShaderLibrary(source, backend)` / `get_kernel_function(name)` once per
  distinct source and kernel (as Inductor's own MPS kernels define their libraries in the
  header), and at the call site `fn.run_command_block(block)` where `block` does
  start_encoding / set_arg_tensor / set_arg_int / dispatch.
- C++ (AOTInductor, or `cpp_wrapper=True`): the AOTI MPS shim calls of shim_mps.h, in the
  style of Inductor's cpp_wrapper_mps.py: a lazily created static library and kernel function
  per source and kernel name, and a lambda doing aoti_torch_mps_start_encoding /
  set_arg_tensor / set_arg_int / dispatch_array_with_group_size inside
  aoti_torch_mps_run_command_block, whose result is checked.

Sizes may be sympy expressions over the graph's size symbols; each wrapper prints them with its
own expression printer. The output is allocated by Inductor itself (an ExternKernelOut-style
node with a FixedLayout matching the op's fake implementation), so memory planning and buffer
reuse treat it like any other extern kernel's output.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence

import sympy
import torch
from torch._inductor import ir
from torch._inductor.virtualized import V
from torch.utils._sympy.functions import FloorDiv

from ..ops.launch import IntArg, KernelLaunch, Scratch, TensorArg
from ..ops.operands import OpLaunch

# Per wrapper object: (runtime, source) -> library name, (library name, kernel) -> function name.
_NAMES_ATTR = "_mpsk_metal_names"
SHIM_INCLUDE = "#include <torch/csrc/inductor/aoti_torch/c/shim_mps.h>"
_RAW_DELIMITER = "MPSK"  # C++ raw string delimiter around Metal sources


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


def _names(wrapper) -> tuple[dict, dict]:
    return wrapper.__dict__.setdefault(_NAMES_ATTR, ({}, {}))


class _RendersLaunch:
    """What MpskKernel and MpskMultiKernel share: the launch's operands as the node's inputs, sizes,
    and rendering the plan into the wrapper of the graph being compiled."""

    def _bind(self, launch: OpLaunch, substitutions, runtime: str) -> list[ir.IRNode]:
        """The launch's distinct operand buffers (the node's inputs); `tensors` maps each plan tensor
        name to an index into them and the dtype the kernel reads it as (None: its own;
        torch.uint8 for a bool mask, as the eager op binds it)."""
        inputs: list[ir.IRNode] = []
        tensors: dict[str, tuple[int, torch.dtype | None]] = {}
        for name, operand in launch.operands.items():
            if not any(operand.value is i for i in inputs):
                inputs.append(operand.value)
            tensors[name] = (next(n for n, i in enumerate(inputs) if i is operand.value), operand.read_as)
        self.tensors = tensors
        self.plan = launch.plan
        self.runtime = runtime
        self.substitutions = dict(substitutions or {})
        return inputs

    def size(self, value) -> sympy.Expr:
        return normalize(value, self.substitutions)

    def input_reference(self, name: str) -> tuple[str, torch.dtype | None]:
        index, view = self.tensors[name]
        return self.inputs[index].codegen_reference(), view

    def output_buffers(self) -> dict[str, str]:
        """Plan tensor name -> the wrapper's name of the buffer Inductor allocated for it."""
        raise NotImplementedError

    def unused_outputs(self) -> list[Scratch]:
        """Outputs the graph never reads (Inductor removed their buffers): the kernel still writes
        them, so the call allocates them as scratch."""
        return []

    def render(self, wrapper) -> None:
        writer = CppLaunchWriter(self, wrapper) if V.graph.cpp_wrapper else PythonLaunchWriter(self, wrapper)
        writer.write()


class MpskKernel(_RendersLaunch, ir.ExternKernelOut):
    """One mpsk op call lowered to the Metal kernel launches of `launch`; its one output ("out") is
    this node's own buffer.

    `substitutions` maps stand-in symbols the lowering gave the launch function back to the graph's
    size expressions (lowerings.decided_size). `runtime` is where the kernels run: "mps", or "cpu"
    for the emulator.
    """

    def __init__(
        self,
        layout: ir.Layout,
        launch: OpLaunch,
        *,
        runtime: str,
        op: torch._ops.OpOverload,
        substitutions: Mapping[sympy.Symbol, sympy.Expr] | None = None,
        writes: Sequence[str] = (),
    ) -> None:
        if launch.outputs != ("out",):
            raise ValueError(f"MpskKernel renders a launch with one output; this one writes {launch.outputs}")
        inputs = self._bind(launch, substitutions, runtime)
        super().__init__(layout, inputs, python_kernel_name=f"mpsk_metal.{op._opname}", op_overload=op)
        self.mutation_outputs = [ir.MutationOutput(ir.NoneLayout(device=layout.device), launch.operands[name].value,
                                                   self) for name in writes]

    def output_buffers(self) -> dict[str, str]:
        return {"out": self.get_name()}

    def codegen(self, wrapper) -> None:
        self.codegen_comment(wrapper)
        self.render(wrapper)


class MpskMultiKernel(_RendersLaunch, ir.ExternKernel):
    """An mpsk op call with several outputs (add_rms_norm's (y, h)), lowered to one launch writing all.

    In the manner of Inductor's multi-output `.out()` kernels: this node has a MultiOutputLayout and
    no buffer of its own; each output is an `AllocatingMultiOutput` child that Inductor plans and
    frees like any buffer, allocated here just before the launch that writes it. `outputs` gives
    each child's layout in the order of `launch.outputs`.
    """

    def __init__(
        self,
        device: torch.device,
        outputs: list[ir.Layout],
        launch: OpLaunch,
        *,
        runtime: str,
        op: torch._ops.OpOverload,
        substitutions: Mapping[sympy.Symbol, sympy.Expr] | None = None,
    ) -> None:
        if len(outputs) != len(launch.outputs):
            raise ValueError(f"{len(outputs)} output layouts for a launch writing {launch.outputs}")
        inputs = self._bind(launch, substitutions, runtime)
        super().__init__(None, ir.MultiOutputLayout(device=device), self.unwrap_storage(inputs),
                         python_kernel_name=f"mpsk_metal.{op._opname}", op_overload=op)
        self.name = V.graph.register_buffer(self)
        V.graph.register_operation(self)
        self.outputs = [ir.AllocatingMultiOutput(layout, self, [(tuple, i)]) for i, layout in enumerate(outputs)]
        self.output_names = launch.outputs

    def should_allocate(self) -> bool:
        return False

    def _used(self) -> list[tuple[str, ir.MultiOutput]]:
        return [(name, out) for name, out in zip(self.output_names, self.outputs, strict=True)
                if out.get_name() not in V.graph.removed_buffers]

    def output_buffers(self) -> dict[str, str]:
        return {name: out.get_name() for name, out in self._used()}

    def unused_outputs(self) -> list[Scratch]:
        used = dict(self._used())
        return [Scratch(name, tuple(out.get_size()), out.get_dtype())
                for name, out in zip(self.output_names, self.outputs, strict=True) if name not in used]

    def codegen(self, wrapper) -> None:
        self.codegen_comment(wrapper)
        used = [out for _, out in self._used()]
        for out in used:
            wrapper.codegen_allocation(out)
        self.render(wrapper)
        if not V.graph.cpp_wrapper:  # the packed value Inductor deletes once its outputs are taken
            wrapper.writeline(f"{self.get_name()} = ({''.join(o.get_name() + ', ' for o in used)})")


class _LaunchWriter(abc.ABC):
    """Renders an MpskKernel's plan: scratch buffers, then each launch's argument binding and dispatch."""

    def __init__(self, node: _RendersLaunch, wrapper) -> None:
        self.node, self.wrapper = node, wrapper
        self.prefix = node.get_name()

    def write(self) -> None:
        # Input references first, outside the call's scope: a reinterpreted view's reference may
        # declare size arrays, which the wrapper caches by value and reuses at later call sites.
        refs = {name: self.node.input_reference(name) for name in self.node.tensors}
        self.begin()
        tensors = self.node.output_buffers()
        scratch = [*self.node.plan.scratch, *self.node.unused_outputs()]
        for s in scratch:
            tensors[s.name] = self.scratch(s)
        for name, (ref, view) in refs.items():
            tensors[name] = ref if view is None else self.view(name, ref, view)
        for i, launch in enumerate(self.node.plan.launches):
            self.launch(i, launch, tensors)
        self.end([tensors[s.name] for s in scratch])

    def function(self, launch: KernelLaunch) -> str:
        """The wrapper-level kernel function name, defining library and function once per wrapper."""
        libs, fns = _names(self.wrapper)
        key = (self.node.runtime, launch.source)
        lib = libs.get(key)
        if lib is None:
            lib = libs[key] = f"mpsk_lib_{len(libs)}"
            self.define_library(lib, launch.source)
        fn = fns.get((lib, launch.kernel))
        if fn is None:
            fn = fns[(lib, launch.kernel)] = f"{lib}_{launch.kernel}"
            self.define_function(fn, lib, launch.kernel)
        return fn

    def bindings(self, launch: KernelLaunch, tensors: Mapping[str, str]) -> list[tuple[int, str, str]]:
        """(index, "tensor" or "int", rendered value) for each argument, in kernel order."""
        out = []
        for idx, arg in enumerate(launch.args):
            if isinstance(arg, TensorArg):
                out.append((idx, "tensor", tensors[arg.name]))
            else:
                assert isinstance(arg, IntArg)
                out.append((idx, "int", self.sizevar(arg.value)))
        return out

    # Per wrapper language: how the call site opens and closes, and sizes, buffers, library and
    # function definitions and launches are written.
    @abc.abstractmethod
    def begin(self) -> None: ...
    @abc.abstractmethod
    def end(self, scratch: Sequence[str]) -> None: ...
    @abc.abstractmethod
    def sizevar(self, value) -> str: ...
    @abc.abstractmethod
    def scratch(self, s: Scratch) -> str: ...
    @abc.abstractmethod
    def view(self, name: str, ref: str, dtype: torch.dtype) -> str: ...
    @abc.abstractmethod
    def define_library(self, lib: str, source: str) -> None: ...
    @abc.abstractmethod
    def define_function(self, fn: str, lib: str, kernel: str) -> None: ...
    @abc.abstractmethod
    def launch(self, i: int, launch: KernelLaunch, tensors: Mapping[str, str]) -> None: ...


class PythonLaunchWriter(_LaunchWriter):
    def begin(self) -> None:
        """Python needs no scope: scratch buffers are deleted at the end."""

    def sizevar(self, value) -> str:
        return self.wrapper.codegen_python_sizevar(self.node.size(value))

    def scratch(self, s: Scratch) -> str:
        name = f"{self.prefix}_{s.name}"
        shape = self.wrapper.codegen_python_shape_tuple([self.node.size(d) for d in s.shape])
        device = self.node.get_device()
        self.wrapper.writeline(f"{name} = torch.empty({shape}, dtype={s.dtype}, device='{device}')")
        return name

    def view(self, name: str, ref: str, dtype: torch.dtype) -> str:
        return f"{ref}.view({dtype})"

    def define_library(self, lib: str, source: str) -> None:
        self.wrapper.add_import_once("from mps_inductor_ext.shaders import ShaderLibrary")
        # A raw triple-quoted string keeps the Metal source readable (and its macros' line
        # continuations intact); repr is the fallback for a source that contains the quotes.
        text = f"r'''{source}'''" if "'''" not in source and not source.endswith("\\") else repr(source)
        self.wrapper.header.writeline(f"{lib} = ShaderLibrary({text}, {self.node.runtime!r}, strict=True)")

    def define_function(self, fn: str, lib: str, kernel: str) -> None:
        self.wrapper.header.writeline(f"{fn} = {lib}.get_kernel_function({kernel!r})")

    def launch(self, i: int, launch: KernelLaunch, tensors: Mapping[str, str]) -> None:
        w, fn = self.wrapper, self.function(launch)
        block = f"{self.prefix}_block{i}"
        w.writeline(f"def {block}():")
        w.writeline(f"    {fn}.start_encoding()")
        for idx, kind, value in self.bindings(launch, tensors):
            w.writeline(f"    {fn}.set_arg_{kind}({idx}, {value})")
        threads = ", ".join(self.sizevar(t) for t in launch.threads)
        group = ", ".join(self.sizevar(g) for g in launch.group_size)
        w.writeline(f"    {fn}.dispatch([{threads}], [{group}])")
        w.writeline(f"{fn}.run_command_block({block})")

    def end(self, scratch: Sequence[str]) -> None:
        if scratch:
            self.wrapper.writeline(f"del {', '.join(scratch)}")


class CppLaunchWriter(_LaunchWriter):
    """One C++ scope per op call, so scratch buffers and dtype views are released at its end."""

    def begin(self) -> None:
        libs, _ = _names(self.wrapper)
        if not libs:  # first MpskKernel in this wrapper
            self.wrapper.header.writeline(SHIM_INCLUDE)
        self.wrapper.writeline("{")

    def end(self, scratch: Sequence[str]) -> None:
        self.wrapper.writeline("}")

    def sizevar(self, value) -> str:
        return self.wrapper.codegen_sizevar(self.node.size(value))

    def _handle(self, name: str, call: str) -> str:
        """Declares `RAIIAtenTensorHandle name` owning the handle `call` (which ends in `&handle)`) makes."""
        w = self.wrapper
        w.writeline(f"AtenTensorHandle {name}_handle;")
        w.writeline(f"AOTI_TORCH_ERROR_CODE_CHECK({call}&{name}_handle));")
        w.writeline(f"RAIIAtenTensorHandle {name}({name}_handle);")
        return name

    def scratch(self, s: Scratch) -> str:
        w, name = self.wrapper, f"{self.prefix}_{s.name}"
        shape = [self.node.size(d) for d in s.shape]
        strides = ir.FlexibleLayout.contiguous_strides(shape)
        w.writeline(f"int64_t {name}_size[] = {{{', '.join(map(w.codegen_sizevar, shape))}}};")
        w.writeline(f"int64_t {name}_stride[] = {{{', '.join(map(w.codegen_sizevar, strides))}}};")
        device_type, device_id = w.codegen_device(self.node.get_device()).split(",")
        device_idx = w.codegen_device_idx(self.node.get_device(), device_id)
        dtype = w.codegen_dtype(s.dtype)
        return self._handle(
            name,
            f"aoti_torch_empty_strided({len(shape)}, {name}_size, {name}_stride, {dtype}, {device_type}, "
            f"{device_idx}, ",
        )

    def view(self, name: str, ref: str, dtype: torch.dtype) -> str:
        device = self.node.get_device().type
        return self._handle(f"{self.prefix}_{name}_view",
                            f"aoti_torch_{device}_view_dtype({ref}, {self.wrapper.codegen_dtype(dtype)}, ")

    def define_library(self, lib: str, source: str) -> None:
        if f'){_RAW_DELIMITER}"' in source:
            raise ValueError(f"mpsk: Metal source contains the raw-string terminator ){_RAW_DELIMITER}\"")
        self.wrapper.header.splice(f"""
static const char* {lib}_source = R"{_RAW_DELIMITER}({source}){_RAW_DELIMITER}";
static AOTIMetalShaderLibraryHandle {lib}() {{
    static const auto library = []() {{
        AOTIMetalShaderLibraryHandle handle = nullptr;
        AOTI_TORCH_ERROR_CODE_CHECK(aoti_torch_mps_create_shader_library({lib}_source, &handle));
        auto deleter = [](AOTIMetalShaderLibraryHandle h) {{
            if (h) aoti_torch_mps_delete_shader_library(h);
        }};
        return std::unique_ptr<AOTIMetalShaderLibraryOpaque, decltype(deleter)>(handle, deleter);
    }}();
    return library.get();
}}
""")

    def define_function(self, fn: str, lib: str, kernel: str) -> None:
        self.wrapper.header.splice(f"""
static AOTIMetalKernelFunctionHandle {fn}() {{
    static const AOTIMetalKernelFunctionHandle function = []() {{
        AOTIMetalKernelFunctionHandle handle = nullptr;
        AOTI_TORCH_ERROR_CODE_CHECK(aoti_torch_mps_get_kernel_function({lib}(), "{kernel}", &handle));
        return handle;
    }}();
    return function;
}}
""")

    def launch(self, i: int, launch: KernelLaunch, tensors: Mapping[str, str]) -> None:
        """The shim calls inside the block return error codes that a Mac's run_command_block does not
        see (it succeeds though nothing ran), so the block keeps the first failure and the call site
        checks it after the block."""
        w, fn = self.wrapper, self.function(launch)
        block = f"{self.prefix}_block{i}"
        status = f"{block}_status"
        w.writeline(f"AOTITorchError {status} = AOTI_TORCH_SUCCESS;")
        w.writeline(f"auto {block} = [&](AOTIMetalKernelFunctionHandle handle) {{")
        w.writeline(f"    auto check = [&](AOTITorchError e) {{ if ({status} == AOTI_TORCH_SUCCESS) {status} = e; }};")
        w.writeline("    check(aoti_torch_mps_start_encoding(handle));")
        for idx, kind, value in self.bindings(launch, tensors):
            w.writeline(f"    check(aoti_torch_mps_set_arg_{kind}(handle, {idx}, {value}));")
        ndim = len(launch.threads)
        for var, sizes in (("threads", launch.threads), ("group_size", launch.group_size)):
            values = ", ".join(f"static_cast<uint64_t>({self.sizevar(v)})" for v in sizes)
            w.writeline(f"    uint64_t {var}[] = {{{values}}};")
        w.writeline(f"    check(aoti_torch_mps_dispatch_array_with_group_size(handle, threads, {ndim}, group_size, "
                    f"{ndim}));")
        w.writeline("};")
        w.writeline(f"std::function<void(AOTIMetalKernelFunctionHandle)> {block}_function = {block};")
        w.writeline(f"AOTI_TORCH_ERROR_CODE_CHECK(aoti_torch_mps_run_command_block({fn}(), "
                    f"aoti_torch_mps_shared_callback, &{block}_function));")
        w.writeline(f"AOTI_TORCH_ERROR_CODE_CHECK({status});")
