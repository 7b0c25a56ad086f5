"""Launch descriptions: everything needed to run an op's Metal kernels, as data.

One op call becomes a `LaunchPlan`: scratch buffers plus one or more kernel
launches, each naming its specialized source, host name, arguments (tensors by
name, int64 scalars) in buffer order, grid and group size. Sizes may be sympy
expressions, so Inductor can render the same plan into generated code. Three
writers render a plan: `run_plan` here (the eager op, through the shader
runtime's shim calls), the Python wrapper and the C++ (AOTInductor) wrapper.
Launch logic is written once, in the op's plan builder.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence

import sympy
import torch

from ..shaders import ShaderLibrary, mps_backend
from .common import new_buffer

MAX_GROUP_THREADS = 1024  # Apple GPUs: at most 1024 threads per threadgroup, fewer for some pipelines

Size = int | sympy.Expr


@dataclasses.dataclass(frozen=True)
class TensorArg:
    """A tensor bound with set_arg_tensor, by its name in the plan's tensor table."""

    name: str


@dataclasses.dataclass(frozen=True)
class IntArg:
    """An int64 scalar bound with set_arg_int."""

    value: Size


Arg = TensorArg | IntArg


@dataclasses.dataclass(frozen=True)
class Scratch:
    """A buffer the plan allocates for itself (partial results between two kernels)."""

    name: str
    shape: tuple[Size, ...]
    dtype: torch.dtype


@dataclasses.dataclass(frozen=True)
class KernelLaunch:
    source: str
    kernel: str
    args: tuple[Arg, ...]
    threads: tuple[Size, ...]
    group_size: tuple[Size, ...]

    def __post_init__(self):
        if not 1 <= len(self.threads) <= 3 or len(self.threads) != len(self.group_size):
            raise ValueError(
                f"{self.kernel}: threads {self.threads} and group_size {self.group_size} must have the "
                f"same 1 to 3 dimensions"
            )


@dataclasses.dataclass(frozen=True)
class LaunchPlan:
    launches: tuple[KernelLaunch, ...]
    scratch: tuple[Scratch, ...] = ()


def ceil_div(a: Size, b: Size) -> Size:
    if isinstance(a, int) and isinstance(b, int):
        return -(-a // b)
    return sympy.ceiling(sympy.sympify(a) / b)


def specialize(template: str, defines: Mapping[str, object], *, index_extents: Sequence[Size] = ()) -> str:
    """Source for one kernel variant: compile-time constants as #defines ahead of the template.

    `index_extents` (the largest in-row index or element offset each of the kernel's index
    computations forms) adds IDX64, the kernel's choice of 32- or 64-bit index math (wide_index).

    `<metal_stdlib>` is included first, so that names such as VEC or EPS cannot rewrite identifiers
    inside Apple's headers (the template's own include is then a no-op).

    Floats are written with `repr` (the shortest exact decimal of the double) and an
    `f` suffix, so the compiler rounds them to float as PyTorch does.
    """
    if index_extents:
        defines = {**defines, "IDX64": wide_index(*index_extents)}
    lines = []
    for name, value in defines.items():
        if isinstance(value, bool):
            text = "1" if value else "0"
        elif isinstance(value, int):
            text = str(value)
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise ValueError(f"{name} must be finite, got {value}")
            text = f"({value!r}f)"
        elif isinstance(value, str):
            text = value
        else:
            raise TypeError(f"cannot specialize {name} with {type(value).__name__}")
        lines.append(f"#define {name} {text}")
    return "#include <metal_stdlib>\n" + "\n".join(lines) + "\n" + template


INDEX32_LIMIT = 2**32  # the kernels' in-row indices are unsigned 32-bit unless IDX64 (common.metal)
MAX_GRID_THREADS = 2**32 - 1  # [[thread_position_in_grid]] is a uint


def wide_index(*extents: Size) -> bool:
    """IDX64 for a kernel whose in-row indices reach `extents` (largest index or element offset each
    forms): 64-bit index math when one could pass 2^32 - 1, or is symbolic (a graph compiled for
    dynamic sizes serves any size); 32-bit otherwise, which Apple GPUs run several times faster."""
    for e in extents:
        if isinstance(e, sympy.Expr) and e.is_number:
            e = int(e)
        if not isinstance(e, int) or e >= INDEX32_LIMIT:
            return True
    return False


def check_grid(kernel: str, threads: Size) -> None:
    """A 1-D grid must number its threads in a uint; larger launches are refused, not wrapped."""
    if isinstance(threads, sympy.Expr) and threads.is_number:
        threads = int(threads)
    if isinstance(threads, int) and threads > MAX_GRID_THREADS:
        raise ValueError(f"mpsk: {kernel} would launch {threads} threads, more than a Metal grid "
                         f"dimension numbers ({MAX_GRID_THREADS})")


def _concrete(value: Size, what: str) -> int:
    if isinstance(value, int):
        return value
    if isinstance(value, sympy.Expr) and value.is_number:
        return int(value)
    raise ValueError(f"{what} is symbolic ({value}); eager launches need concrete sizes")


def fit_to_pipelines(build: Callable[[int], LaunchPlan], runtime: str) -> LaunchPlan:
    """The plan `build(max_threads)` makes, with max_threads lowered until each launch's group fits
    its kernel's pipeline (maxTotalThreadsPerThreadgroup, which Metal knows only once the kernel is
    compiled and can be below 1024 for a kernel using many registers), as MLX sizes its groups.

    The eager op asks at each call and a lowering at compile time (the Python and C++ wrappers then
    launch the fitted plan): on a Mac the kernels are compiled where the model is compiled, so a
    package built on one Apple GPU family and run on another could meet a different limit. Code
    generated for `mps` where there is none (fake tensors) is fitted to the emulator's pipelines.
    """
    probe = runtime if runtime != "mps" or mps_backend.is_available() else "cpu"
    cap = MAX_GROUP_THREADS
    for _ in range(4):  # a smaller group changes the source (loads per thread), hence the limit
        plan = build(cap)
        over = []
        for launch in plan.launches:
            group = math.prod(launch.group_size)
            if not isinstance(group, int):
                continue
            limit = ShaderLibrary(launch.source, probe, strict=True).get_kernel_function(
                launch.kernel).max_threads_per_threadgroup
            if group > limit:
                over.append((launch.kernel, group, limit))
        if not over:
            return plan
        kernel, group, limit = min(over, key=lambda o: o[2])
        if limit // 32 * 32 >= cap or limit < 32:
            raise RuntimeError(f"mpsk: kernel '{kernel}' takes at most {limit} threads per threadgroup, and its "
                               f"launch plan cannot use fewer than {group}")
        cap = limit // 32 * 32
    raise RuntimeError("mpsk: no launch plan fits its kernels' thread limits")


def run_plan(plan: LaunchPlan, tensors: Mapping[str, torch.Tensor], runtime: str) -> None:
    """Runs a plan through the shader runtime's shim calls, as AOTInductor's C++ would."""
    table = dict(tensors)
    device = next(iter(table.values())).device if table else torch.device("cpu")
    for s in plan.scratch:
        shape = tuple(_concrete(d, f"scratch {s.name}") for d in s.shape)
        table[s.name] = new_buffer(shape, s.dtype, device)
    for launch in plan.launches:
        fn = ShaderLibrary(launch.source, runtime, strict=True).get_kernel_function(launch.kernel)
        threads = [_concrete(t, f"{launch.kernel} threads") for t in launch.threads]
        group = [_concrete(g, f"{launch.kernel} group_size") for g in launch.group_size]
        args: Sequence[Arg] = launch.args

        ints = {
            i: _concrete(a.value, f"{launch.kernel} argument {i}") for i, a in enumerate(args) if isinstance(a, IntArg)
        }

        def block(fn=fn, args=args, ints=ints, threads=threads, group=group):
            fn.start_encoding()
            for idx, arg in enumerate(args):
                if isinstance(arg, TensorArg):
                    fn.set_arg_tensor(idx, table[arg.name])
                else:
                    fn.set_arg_int(idx, ints[idx])
            fn.dispatch(threads, group)

        fn.run_command_block(block)
        for observer in getattr(_observing, "callbacks", ()):
            observer(launch, fn, tuple(threads), tuple(group))


_observing = threading.local()
LaunchObserver = Callable[[KernelLaunch, object, tuple[int, ...], tuple[int, ...]], None]


@contextlib.contextmanager
def observe_launches(callback: LaunchObserver) -> Iterator[None]:
    """Calls `callback(launch, kernel_function, threads, group_size)` after each kernel `run_plan`
    runs on this thread inside the block: the profiler reads each launch's counters there."""
    if not callable(callback):
        raise TypeError(f"callback must be callable, got {type(callback).__name__}")
    before = getattr(_observing, "callbacks", ())
    _observing.callbacks = (*before, callback)
    try:
        yield
    finally:
        _observing.callbacks = before
