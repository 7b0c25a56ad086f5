"""Reading the mpsk kernel launches back out of Inductor's generated Python and C++ wrappers.

Both wrappers render one `Launch` per kernel call: the kernel's library source and host name,
each bound argument (index, "tensor" or "int", the rendered value) and the dispatch's threads
and group size. The parsers know only the text each writer emits, so a test can compare what a
wrapper really binds with the plan it came from and with the kernel's own signature.
"""

from __future__ import annotations

import dataclasses
import re

import torch
from torch._inductor.debug import DebugContext
from torch._inductor.graph import GraphLowering
from torch._inductor.virtualized import V
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.proxy_tensor import make_fx


@dataclasses.dataclass
class Launch:
    block: str
    kernel: str
    source: str
    args: list[tuple[int, str, str]]
    threads: list[str]
    group_size: list[str]


def generate_for_mps(fn, shapes: list[tuple[tuple[int, ...], torch.dtype]], *, cpp: bool) -> str:
    """Inductor's wrapper code for `fn` on (fake) MPS tensors: codegen only, nothing compiled.

    No Mac runs here, so the graph is traced and lowered under FakeTensorMode with `mps` tensors;
    the wrapper is then generated as on a Mac (Python, or C++ in AOTInductor mode).
    """
    mode = FakeTensorMode()
    with mode:
        args = [torch.empty(shape, dtype=dtype, device="mps") for shape, dtype in shapes]
        gm = make_fx(fn)(*args)
    with V.set_fake_mode(mode), torch._inductor.config.patch(cpp_wrapper=cpp), DebugContext():
        graph = GraphLowering(gm, example_inputs=args, cpp_wrapper=cpp, aot_mode=cpp)
        with V.set_graph_handler(graph):
            graph.run(*args)
            code = graph.codegen_with_cpp_wrapper() if cpp else graph.codegen()
    return code[0].value if isinstance(code, tuple) else code.value


def _unwrap_int(text: str) -> str:
    """`static_cast<uint64_t>(128L)` and `128L` -> `128`; other expressions as written."""
    m = re.fullmatch(r"static_cast<uint64_t>\((.*)\)", text.strip())
    text = m.group(1) if m else text.strip()
    return re.sub(r"\b(\d+)L\b", r"\1", text)


def python_launches(code: str) -> list[Launch]:
    library = r"^(mpsk_lib_\d+) = ShaderLibrary\(r'''(.*?)''', '\w+', strict=True\)$"
    libs = {m[0]: m[1] for m in re.findall(library, code, re.M | re.S)}
    fns = {m[0]: (m[1], m[2]) for m in re.findall(
        r"^(mpsk_lib_\w+) = (mpsk_lib_\d+)\.get_kernel_function\('(\w+)'\)$", code, re.M)}
    launches = []
    for block, body, fn in re.findall(r"def (\w+_block\d+)\(\):\n(.*?)\n\s*(\w+)\.run_command_block\(\1\)", code,
                                      re.S):
        lib, kernel = fns[fn]
        args = [(int(i), kind, v) for kind, i, v in re.findall(rf"{fn}\.set_arg_(tensor|int)\((\d+), (.+)\)$", body,
                                                                re.M)]
        threads, group = re.search(rf"{fn}\.dispatch\(\[(.*)\], \[(.*)\]\)", body).groups()
        launches.append(Launch(block, kernel, libs[lib], args, threads.split(", "), group.split(", ")))
    return launches


def cpp_launches(code: str) -> list[Launch]:
    libs = dict(re.findall(r'static const char\* (mpsk_lib_\d+)_source = R"MPSK\((.*?)\)MPSK";', code, re.S))
    fns = {m[0]: (m[1], m[2]) for m in re.findall(
        r'static AOTIMetalKernelFunctionHandle (mpsk_lib_\w+)\(\) \{.*?'
        r'aoti_torch_mps_get_kernel_function\((mpsk_lib_\d+)\(\), "(\w+)"', code, re.S)}
    launches = []
    pattern = (r"auto (\w+_block\d+) = \[&\]\(AOTIMetalKernelFunctionHandle handle\) \{\n(.*?)\n\s*\};\n.*?"
               r"aoti_torch_mps_run_command_block\((\w+)\(\), aoti_torch_mps_shared_callback, &\1_function\)")
    for block, body, fn in re.findall(pattern, code, re.S):
        lib, kernel = fns[fn]
        args = [(int(i), kind, _unwrap_int(v)) for kind, i, v in re.findall(
            r"check\(aoti_torch_mps_set_arg_(tensor|int)\(handle, (\d+), (.+?)\)\);$", body, re.M)]
        threads = re.search(r"uint64_t threads\[\] = \{(.*)\};", body).group(1)
        group = re.search(r"uint64_t group_size\[\] = \{(.*)\};", body).group(1)
        ndim = len(threads.split(", "))
        assert f"check(aoti_torch_mps_dispatch_array_with_group_size(handle, threads, {ndim}, group_size, {ndim}));" \
            in body, body
        # The call site checks what the block's calls returned (a Mac's run_command_block does not).
        assert re.search(rf"AOTI_TORCH_ERROR_CODE_CHECK\({block}_status\);", code), block
        launches.append(Launch(block, kernel, libs[lib], args, [_unwrap_int(t) for t in threads.split(", ")],
                               [_unwrap_int(g) for g in group.split(", ")]))
    return launches
