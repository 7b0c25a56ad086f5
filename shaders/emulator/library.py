"""The CPU emulator's shader library, with torch.mps.compile_shader's calling convention.

A launch is all-or-nothing (staging.py): every buffer is staged into a copy with poisoned
red zones around it, the kernel runs on the copies twice, under two opposite schedules, and
the results are copied back only if both runs finished cleanly, agree, and wrote nothing
outside their buffers. An error therefore leaves every argument as it was.

Beyond what torch.mps.compile_shader can do, and on the emulator only (so kernels from other
projects run verbatim): function constants (`specialized(constants)`), host-sized threadgroup
memory (`threadgroup_memory={k: nbytes}`), and buffers bound by index with holes (`dispatch`).

Two environment knobs make it behave as a particular Mac does: MPSK_EMULATOR_MAX_THREADS lowers
every pipeline's thread limit (`pipeline_thread_limit`), and MPSK_EMULATOR_FAST_MATH (or torch's
PYTORCH_MPS_FAST_MATH) compiles kernel source in fast-math mode (`fast_math_enabled`).
"""

from __future__ import annotations

import ctypes
import os
import warnings
from dataclasses import dataclass

import torch

from ..errors import KernelError, UndefinedBehaviorWarning
from . import abi, binding, counters, reports, sanitizer, stacks, toolchain
from .abi import LaunchFlag, ParamKind, Status
from .prepass import DISPATCH_ATTRIBUTES
from .staging import RED_ZONE, Staged, extent, only_atomic_rounding, stray_write_message

MAX_THREADS_PER_THREADGROUP = abi.MAX_THREADS_PER_THREADGROUP
THREAD_LIMIT_VARIABLE = "MPSK_EMULATOR_MAX_THREADS"
FAST_MATH_VARIABLE = "MPSK_EMULATOR_FAST_MATH"
TORCH_FAST_MATH_VARIABLE = "PYTORCH_MPS_FAST_MATH"


def pipeline_thread_limit() -> int:
    """The maxTotalThreadsPerThreadgroup every pipeline reports (and every launch is held to): 1024,
    or $MPSK_EMULATOR_MAX_THREADS. A Mac's pipeline may report less than 1024 for a kernel that uses
    many registers (640-896 is seen for heavy kernels), so code that sizes groups without asking the
    kernel is tested at lower limits with this."""
    raw = os.environ.get(THREAD_LIMIT_VARIABLE, "").strip()
    if not raw:
        return MAX_THREADS_PER_THREADGROUP
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if not 32 <= value <= MAX_THREADS_PER_THREADGROUP or value % 32:
        raise ValueError(f"{THREAD_LIMIT_VARIABLE} must be a multiple of 32 from 32 to "
                         f"{MAX_THREADS_PER_THREADGROUP}, got {raw!r}")
    return value


def fast_math_enabled() -> bool:
    """Whether kernel source is compiled in fast-math mode: $MPSK_EMULATOR_FAST_MATH if set, else torch's
    own $PYTORCH_MPS_FAST_MATH (which makes torch compile Metal with MTLMathModeFast on a Mac), each on
    when set to anything but "0". Metal's fast math assumes no Inf or NaN, so a kernel whose `-inf`
    guards give NaN there is caught here. Read at each build (torch reads its variable once per process),
    so tests can switch it; the setting is part of every cache key."""
    for name in (FAST_MATH_VARIABLE, TORCH_FAST_MATH_VARIABLE):
        raw = os.environ.get(name)
        if raw is not None and raw.strip() != "":
            return raw.strip() != "0"
    return False


SIMD_WIDTH = abi.SIMD_WIDTH


@dataclass(frozen=True)
class ParamInfo:
    kind: str  # "buffer" | "attribute" | "threadgroup"
    index: int
    is_pointer: bool
    type_code: int
    lanes: int
    elem_size: int
    addr_space: int
    is_const: bool
    optional: bool = False

    @property
    def type_name(self) -> str:
        base = abi.TYPE_NAMES.get(self.type_code, "?")
        return base + (str(self.lanes) if self.lanes > 1 else "")

    @property
    def attribute(self) -> str:
        return DISPATCH_ATTRIBUTES[self.index]


_KIND_NAMES = {ParamKind.BUFFER: "buffer", ParamKind.ATTRIBUTE: "attribute", ParamKind.THREADGROUP: "threadgroup"}


class EmulatedKernel:
    """One kernel function of an emulated library (torch's `_mps_MetalKernel`)."""

    def __init__(self, library: EmulatedLibrary, entry: int, name: str):
        self._lib = library
        self._entry = entry
        self.name = name
        dll = library._dll
        n = dll.mpsk_entry_nparams(entry)
        raw = (abi.ParamInfoStruct * max(n, 1))()
        dll.mpsk_entry_params(entry, raw)
        self.params = [
            ParamInfo(
                _KIND_NAMES[ParamKind(p.kind)],
                p.index,
                bool(p.is_pointer),
                p.type_code,
                p.lanes,
                p.elem_size,
                p.addr_space,
                bool(p.is_const),
                bool(p.optional),
            )
            for p in raw[:n]
        ]
        self.buffers = sorted((p for p in self.params if p.kind == "buffer"), key=lambda p: p.index)
        self.threadgroup_params = sorted(p.index for p in self.params if p.kind == "threadgroup")
        self._declared_max_threads = dll.mpsk_entry_max_threads(entry)  # [[max_total_threads_per_threadgroup]]
        self._tgmem = dll.mpsk_entry_tgmem(entry)
        self._fibers = False

    @property
    def max_threads_per_threadgroup(self) -> int:
        return min(pipeline_thread_limit(), self._declared_max_threads)

    @property
    def thread_execution_width(self) -> int:
        return SIMD_WIDTH

    @property
    def static_thread_group_memory_length(self) -> int:
        return self._tgmem

    def __repr__(self) -> str:
        return f"<emulated Metal kernel '{self.name}'>"

    # -- the compile_shader convenience call ----------------------------------------
    def __call__(
        self, *args, threads=None, group_size=None, arg_casts=None, error_buf_idx=None, threadgroup_memory=None,
        uninitialized=None,
    ) -> None:
        """torch's `_mps_MetalKernel.__call__`. `error_buf_idx` binds the error-report buffer of
        c10/metal/error.h at that index (Inductor passes it for kernels that check indices); a
        report raises here, where torch raises at the next synchronize. `threadgroup_memory`
        ({k: nbytes} for [[threadgroup(k)]] parameters) and `uninitialized` (argument indices whose
        bytes the host never wrote, for initcheck: sanitizer.py) are the emulator's own additions."""
        casts = binding.parse_casts(self.name, arg_casts, args)
        threads_dims = binding.normalize_dims(threads, "threads", self.name)
        if threads_dims is None:
            first = next((a for a in args if isinstance(a, torch.Tensor)), None)
            if first is None:
                raise ValueError(f"kernel '{self.name}': threads is required when no argument is a tensor")
            threads_dims = [first.numel()]
            if threads_dims[0] == 0:
                raise ValueError(
                    f"kernel '{self.name}': threads defaults to the first tensor's numel, which is 0; "
                    f"a dispatch needs at least one thread"
                )
        group_dims = binding.normalize_dims(group_size, "group_size", self.name)
        bound = dict(enumerate(args))
        if error_buf_idx is None:
            self.dispatch(bound, threads_dims, group_dims, casts, threadgroup_memory=threadgroup_memory,
                          uninitialized=uninitialized)
            return
        if isinstance(error_buf_idx, bool) or not isinstance(error_buf_idx, int) or error_buf_idx < 0:
            raise TypeError(f"kernel '{self.name}': error_buf_idx must be a non-negative int, got {error_buf_idx!r}")
        if error_buf_idx in bound:
            raise ValueError(f"kernel '{self.name}': error_buf_idx {error_buf_idx} is also a positional argument")
        errors = reports.new_error_buffer()
        bound[error_buf_idx] = errors
        self.dispatch(
            bound, threads_dims, group_dims, casts, runtime_owned={error_buf_idx},
            threadgroup_memory=threadgroup_memory, uninitialized=uninitialized,
        )
        reports.raise_reported_errors(self.name, errors)

    # -- binding and launch ------------------------------------------------------------
    def dispatch(
        self,
        args: dict[int, object],
        threads: list[int],
        group_size: list[int] | None = None,
        casts: dict[int, str] | None = None,
        runtime_owned: set[int] | None = None,
        threadgroup_memory: dict[int, int] | None = None,
        uninitialized: set[int] | None = None,
    ) -> None:
        """Runs the kernel with `args` bound by buffer index; nothing changes if it fails.

        Indices may have holes where the kernel has no buffer or an optional one (behind a
        function constant that is off). `runtime_owned` names buffers the runtime binds for
        itself (the error-report buffer): their bytes may differ between the two schedules.
        `uninitialized` names tensor arguments whose bytes the host never wrote (torch.empty
        outputs): under initcheck, a read of one of their bytes not written first is an error."""
        casts = casts or {}
        grid, group = self._launch_shape(threads, group_size)
        self._check_attributes(len(threads))
        tg_sizes = self._threadgroup_sizes(threadgroup_memory)
        bindings = binding.bind(self.name, self.buffers, args, casts)
        uninit = self._uninitialized(uninitialized, bindings)
        self._launch(bindings, grid, group, runtime_owned or set(), tg_sizes, uninit)

    def _uninitialized(self, indices, bindings: dict[int, object]) -> set[int]:
        if indices is None:
            return set()
        if isinstance(indices, (str, bytes)) or not hasattr(indices, "__iter__"):
            raise TypeError(f"kernel '{self.name}': uninitialized must be a set of argument indices, got {indices!r}")
        out = set()
        for i in indices:
            if isinstance(i, bool) or not isinstance(i, int):
                raise TypeError(f"kernel '{self.name}': uninitialized entries must be ints, got {i!r}")
            if not isinstance(bindings.get(i), torch.Tensor):
                raise ValueError(f"kernel '{self.name}': uninitialized names argument {i}, which is not a tensor")
            out.add(i)
        return out

    def _threadgroup_sizes(self, sizes) -> list[int]:
        """Bytes of each [[threadgroup(k)]] parameter, checked: Metal needs them set, in 16-byte steps."""
        if sizes is None:
            sizes = {}
        if not isinstance(sizes, dict):
            raise TypeError(
                f"kernel '{self.name}': threadgroup_memory must be a dict of index to bytes, got {type(sizes).__name__}"
            )
        unknown = sorted(k for k in sizes if k not in self.threadgroup_params)
        if unknown:
            raise ValueError(
                f"kernel '{self.name}': threadgroup_memory names {unknown}, but the kernel's [[threadgroup(k)]] "
                f"parameters are {self.threadgroup_params}"
            )
        missing = [k for k in self.threadgroup_params if k not in sizes]
        if missing:
            raise ValueError(
                f"kernel '{self.name}' has [[threadgroup({missing[0]})]] memory: pass threadgroup_memory="
                f"{{{missing[0]}: nbytes}}"
            )
        out = [0] * abi.MAX_THREADGROUP_PARAMS
        for k, n in sizes.items():
            if isinstance(n, bool) or not isinstance(n, int) or n <= 0 or n % 16:
                raise ValueError(
                    f"kernel '{self.name}': threadgroup_memory[{k}] must be a positive multiple of 16 bytes "
                    f"(Metal's rule), got {n!r}"
                )
            if n + self._tgmem > abi.MAX_THREADGROUP_MEMORY:
                raise ValueError(
                    f"kernel '{self.name}': threadgroup_memory[{k}] = {n} bytes plus the kernel's "
                    f"{self._tgmem} static bytes exceeds {abi.MAX_THREADGROUP_MEMORY}"
                )
            out[k] = n
        return out

    def _launch_shape(self, threads: list[int], group_size: list[int] | None):
        if group_size is not None and len(group_size) != len(threads):
            raise ValueError(
                f"kernel '{self.name}': threads has {len(threads)} dimensions but group_size has "
                f"{len(group_size)}"
            )
        limit = self.max_threads_per_threadgroup
        if group_size is None:
            group_size = [min(threads[0], limit)] if len(threads) == 1 else [limit]
        grid = list(threads) + [1] * (3 - len(threads))
        group = list(group_size) + [1] * (3 - len(group_size))
        total = group[0] * group[1] * group[2]
        if total > limit:
            raise ValueError(
                f"kernel '{self.name}': threadgroup size {group_size} ({total} threads) exceeds the "
                f"kernel's limit of {limit} (its pipeline's maxTotalThreadsPerThreadgroup)"
            )
        return grid, group

    def _check_attributes(self, ndims: int) -> None:
        for p in self.params:
            if p.kind != "attribute":
                continue
            is_3d = p.index <= DISPATCH_ATTRIBUTES.index("threads_per_grid")
            if is_3d and p.lanes == 1 and ndims > 1:
                raise ValueError(
                    f"kernel '{self.name}' declares [[{p.attribute}]] as a scalar but the dispatch "
                    f"has {ndims} dimensions; declare it uint{ndims}"
                )
            if is_3d and p.lanes > 1 and p.lanes < ndims:
                raise ValueError(
                    f"kernel '{self.name}' declares [[{p.attribute}]] with {p.lanes} components but "
                    f"the dispatch has {ndims} dimensions"
                )

    def _launch(
        self,
        bindings: dict[int, object],
        grid: list[int],
        group: list[int],
        runtime_owned: set[int],
        tg_sizes: list[int],
        uninitialized: set[int] = frozenset(),
    ) -> None:
        spans: dict[int, tuple[int, int]] = {}  # storage address -> covered [lo, hi)
        for value in bindings.values():
            if isinstance(value, torch.Tensor):
                key, start = value.untyped_storage().data_ptr(), value.data_ptr()
                lo, hi = spans.get(key, (start, start))
                spans[key] = (min(lo, start), max(hi, start + extent(value)))
        staged = {key: Staged(lo, hi - lo) for key, (lo, hi) in spans.items()}
        owners: dict[int, tuple[Staged, int, int, str]] = {}  # idx -> (staging, offset, length, what)
        dtypes: dict[int, torch.dtype] = {}
        for idx, value in bindings.items():
            if isinstance(value, torch.Tensor):
                s = staged[value.untyped_storage().data_ptr()]
                off, n = value.data_ptr() - s.lo, extent(value)
                s.cover(off, n)
                owners[idx] = (s, off, n, f"a {value.dtype} tensor of shape {tuple(value.shape)}")
                dtypes[idx] = value.dtype
            else:
                s = staged[-idx - 1] = Staged(0, len(value), payload=value)
                owners[idx] = (s, 0, len(value), f"a {len(value)}-byte scalar argument")
        for s in staged.values():
            s.refill()
        nbuf = max([*owners, *(p.index for p in self.buffers)], default=-1) + 1
        # An unbound index is a null pointer: a kernel that touches it faults, and that is an error.
        pointers = [owners[i][0].addr + owners[i][1] if i in owners else None for i in range(nbuf)]
        bufs = (ctypes.c_void_p * max(nbuf, 1))(*pointers)
        grid_c = (ctypes.c_uint * 3)(*grid)
        group_c = (ctypes.c_uint * 3)(*group)
        tg_c = (ctypes.c_ulong * abi.MAX_THREADGROUP_PARAMS)(*tg_sizes)
        checks = sanitizer.active_checks()
        recording = counters.recording()
        instrumented = checks is not None or recording
        dll = self._lib.instrumented_dll() if instrumented else self._lib._dll
        configure = self._range_table(owners, staged, checks or 0, uninitialized) if instrumented else None
        strict = LaunchFlag.STRICT if self._lib.strict else 0
        atomic_ranges: list[tuple[int, int, float]] = []

        def run(flags: int) -> None:
            flags |= strict
            err = ctypes.create_string_buffer(1024)
            fibers = LaunchFlag.FIBERS if self._fibers else 0
            if configure:
                configure()
            status = dll.mpsk_launch(self._entry, bufs, grid_c, group_c, tg_c, fibers | flags, err, len(err))
            if status == Status.NEEDS_FIBERS:
                self._fibers = True
                for s in staged.values():
                    s.refill()
                if configure:
                    configure()
                status = dll.mpsk_launch(
                    self._entry, bufs, grid_c, group_c, tg_c, LaunchFlag.FIBERS | flags, err, len(err)
                )
            if status != Status.OK:
                message = err.value.decode(errors="replace")
                raise KernelError(f"kernel '{self.name}': {message}; no argument was changed")
            atomic_ranges.extend(self._lib.atomic_ranges(dll))

        run(0)
        if recording:
            raw = (ctypes.c_ulong * counters.NUM_COUNTERS)()
            dll.mpsk_san_counts(raw, counters.NUM_COUNTERS)
            counters.add(counters.from_raw(self.name, grid, group, raw))
        first = {key: s.buf.clone() for key, s in staged.items()}
        for s in staged.values():
            s.refill()
        run(LaunchFlag.FLIP_SCHEDULE)
        for idx, (s, off, n, what) in sorted(owners.items()):
            key = next(k for k, v in staged.items() if v is s)
            seg = slice(RED_ZONE + off, RED_ZONE + off + n)
            if idx in runtime_owned or torch.equal(first[key][seg], s.buf[seg]):
                continue
            if only_atomic_rounding(first[key][seg], s.buf[seg], s.addr + off, dtypes.get(idx), atomic_ranges):
                continue
            differ = (first[key][seg] != s.buf[seg]).nonzero()
            raise KernelError(
                f"kernel '{self.name}': argument {idx} ({what}) ends differently when the threads and "
                f"threadgroups run in another order (first at byte {int(differ[0])}): a missing "
                f"threadgroup_barrier, or threads writing the same element; no argument was changed"
            )
        note = self._lib.undefined_note(dll)
        if note:
            warnings.warn(f"kernel '{self.name}': {note}", UndefinedBehaviorWarning, stacklevel=4)
        for s in dict.fromkeys(o[0] for _, o in sorted(owners.items())):
            r = s.first_stray_write()
            if r is not None:
                raise KernelError(stray_write_message(self.name, s, r, owners))
        for s in staged.values():
            s.write_back()

    def _range_table(self, owners: dict, staged: dict, checks: int, uninitialized: set[int]):
        """A function that resets the shadows and hands the instrumented runtime this launch's
        range table (sanitizer.RangeStruct per argument), to call before each run."""
        if len(owners) > sanitizer.MAX_RANGES:
            raise ValueError(f"kernel '{self.name}': the instrumented build checks at most "
                             f"{sanitizer.MAX_RANGES} arguments, got {len(owners)}")
        spaces = {p.index: p.addr_space for p in self.buffers}
        read_only = {p.index for p in self.buffers if p.is_const or p.addr_space == abi.AddressSpace.CONSTANT}
        sizes = {p.index: p.elem_size * (4 if p.lanes == 3 else p.lanes) for p in self.buffers}
        init = {id(s): torch.zeros((s.length + 7) // 8 + 1, dtype=torch.uint8) for s in staged.values()}
        race = sanitizer.Check.RACECHECK & checks
        writer = {id(s): torch.zeros(max(s.length, 1), dtype=torch.int64) for s in staged.values()} if race else {}
        table = (sanitizer.RangeStruct * max(len(owners), 1))()
        for k, (idx, (s, off, n, _)) in enumerate(sorted(owners.items())):
            r = table[k]
            r.lo, r.hi, r.base = s.addr + off, s.addr + off + n, s.addr
            r.init = init[id(s)].data_ptr()
            r.writer = writer[id(s)].data_ptr() if race else None
            r.index, r.elem_size = idx, max(sizes.get(idx, 1), 1)
            r.space = spaces.get(idx, abi.AddressSpace.DEVICE) or abi.AddressSpace.DEVICE
            r.uninitialized = int(idx in uninitialized)
            r.read_only = int(idx in read_only or idx not in spaces)
        dll = self._lib.instrumented_dll()

        def configure() -> None:
            for t in (*init.values(), *writer.values()):
                t.zero_()
            dll.mpsk_san_configure(table, len(owners), int(checks))

        configure.keep = (table, init, writer)  # alive while the launch runs
        return configure


_abi_checked = False


class EmulatedLibrary:
    """A compiled shader library on the CPU emulator (torch's `_mps_ShaderLibrary`).

    `constants` sets function constants by name (see `specialized`); `fast_math` (default: the
    environment's, `fast_math_enabled()`) compiles the kernel source in fast-math mode."""

    def __init__(self, source: str, strict: bool = False, constants: dict[str, bool | int | float] | None = None,
                 fast_math: bool | None = None):
        self.source = source
        self.strict = strict
        self.constants = dict(constants or {})
        self.fast_math = fast_math_enabled() if fast_math is None else fast_math
        self.path = toolchain.build(source, self.constants, fast_math=self.fast_math)
        self._instrumented_dll: ctypes.CDLL | None = None
        dll = ctypes.CDLL(str(self.path))
        self._declare(dll)
        stacks.attach(dll)
        self._dll = dll
        self._check_abi()
        self._kernels = {}
        for e in range(dll.mpsk_num_entries()):
            name = dll.mpsk_entry_name(e).decode()
            self._kernels[name] = EmulatedKernel(self, e, name)
        self._specializations: dict[tuple, EmulatedLibrary] = {}

    def instrumented_dll(self) -> ctypes.CDLL:
        """The instrumented build of this library (sanitizer.py), built and loaded at first use."""
        if self._instrumented_dll is None:
            path = toolchain.build(self.source, self.constants, fast_math=self.fast_math, instrumented=True)
            dll = ctypes.CDLL(str(path))
            self._declare(dll)
            sanitizer.declare(dll)
            stacks.attach(dll)
            self._instrumented_dll = dll
        return self._instrumented_dll

    @staticmethod
    def _declare(dll: ctypes.CDLL) -> None:
        dll.mpsk_num_entries.restype = ctypes.c_int
        dll.mpsk_entry_name.restype = ctypes.c_char_p
        dll.mpsk_entry_name.argtypes = [ctypes.c_int]
        dll.mpsk_entry_nparams.argtypes = [ctypes.c_int]
        dll.mpsk_entry_tgmem.restype = ctypes.c_ulong
        dll.mpsk_entry_tgmem.argtypes = [ctypes.c_int]
        dll.mpsk_entry_max_threads.argtypes = [ctypes.c_int]
        dll.mpsk_entry_params.argtypes = [ctypes.c_int, ctypes.c_void_p]
        dll.mpsk_attr_name.restype = ctypes.c_char_p
        dll.mpsk_attr_name.argtypes = [ctypes.c_int]
        dll.mpsk_atomic_ranges.restype = ctypes.c_int
        dll.mpsk_atomic_ranges.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]
        dll.mpsk_undefined_note.restype = ctypes.c_char_p
        dll.mpsk_num_function_constants.restype = ctypes.c_int
        dll.mpsk_function_constant.restype = ctypes.c_char_p
        dll.mpsk_function_constant.argtypes = [
            ctypes.c_int,
            ctypes.POINTER(ctypes.c_int),
            ctypes.POINTER(ctypes.c_char_p),
        ]
        dll.mpsk_launch.argtypes = [
            ctypes.c_int,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_int,
            ctypes.c_char_p,
            ctypes.c_int,
        ]

    def _check_abi(self) -> None:
        global _abi_checked
        if _abi_checked:
            return
        bad = abi.mismatches(self._dll)
        if bad:
            raise RuntimeError(f"the emulator's runtime and host disagree on its ABI: {'; '.join(bad)}")
        _abi_checked = True

    def __getattr__(self, name: str) -> EmulatedKernel:
        kernels = self.__dict__.get("_kernels", {})
        if name in kernels:
            return kernels[name]
        raise AttributeError(f"shader library has no kernel '{name}'; it has {sorted(kernels) or 'none'}")

    def __dir__(self) -> list[str]:
        return sorted(self._kernels)

    def function_constants(self) -> list[tuple[str, int, str]]:
        """The source's [[function_constant(n)]] declarations: (name, n, type)."""
        out = []
        index, type_ = ctypes.c_int(), ctypes.c_char_p()
        for i in range(self._dll.mpsk_num_function_constants()):
            name = self._dll.mpsk_function_constant(i, ctypes.byref(index), ctypes.byref(type_))
            out.append((name.decode(), index.value, type_.value.decode()))
        return out

    def specialized(self, constants: dict[str | int, bool | int | float]) -> EmulatedLibrary:
        """This source compiled with function constants set, by name or [[function_constant(n)]]
        index, as a pipeline is made from MTLFunctionConstantValues; cached per set of values."""
        if not isinstance(constants, dict):
            raise TypeError(f"constants must be a dict of name or index to value, got {type(constants).__name__}")
        declared = self.function_constants()
        by_index = {idx: (name, ty) for name, idx, ty in declared}
        by_name = {name: ty for name, _, ty in declared}
        named: dict[str, bool | int | float] = {}
        for key, value in constants.items():
            if isinstance(key, int) and not isinstance(key, bool) and key in by_index:
                name, ty = by_index[key]
            elif isinstance(key, str) and key in by_name:
                name, ty = key, by_name[key]
            else:
                known = [f"{n} ({i})" for n, i, _ in declared] or "none"
                raise ValueError(f"no function constant {key!r} in this source; it declares {known}")
            _check_constant(name, ty, value)
            if name in named:
                raise ValueError(f"function constant '{name}' is given twice (by name and by index)")
            named[name] = value
        key = tuple(sorted((k, type(v).__name__, v) for k, v in named.items()))
        if key not in self._specializations:
            self._specializations[key] = EmulatedLibrary(self.source, self.strict, named, self.fast_math)
        return self._specializations[key]

    def atomic_ranges(self, dll: ctypes.CDLL | None = None) -> list[tuple[int, int, float]]:
        """[lo, hi) addresses changed by atomic read-modify-writes in the last launch (of `dll`, this
        library's plain build or its instrumented one), each with the sum over its float operations
        of their largest magnitude (0 for integer ones)."""
        dll = dll or self._dll
        out = (ctypes.c_ulong * (2 * abi.MAX_ATOMIC_RANGES))()
        scale = (ctypes.c_double * abi.MAX_ATOMIC_RANGES)()
        n = min(dll.mpsk_atomic_ranges(out, scale, abi.MAX_ATOMIC_RANGES), abi.MAX_ATOMIC_RANGES)
        return [(out[2 * i], out[2 * i + 1], scale[i]) for i in range(n)]

    def undefined_note(self, dll: ctypes.CDLL | None = None) -> str:
        """The first undefined (but not erroneous) act of the last launch (of `dll`), or ''."""
        return (dll or self._dll).mpsk_undefined_note().decode(errors="replace")


_INT_TYPES = {"char", "uchar", "short", "ushort", "int", "uint", "long", "ulong", "int8_t", "uint8_t", "int16_t",
              "uint16_t", "int32_t", "uint32_t", "int64_t", "uint64_t", "size_t"}


def _check_constant(name: str, type_text: str, value) -> None:
    """A function constant's value must suit its declared type, as MTLFunctionConstantValues' does."""
    base = type_text.replace("const", "").strip()
    if base == "bool":
        ok = isinstance(value, bool)
    elif base in _INT_TYPES:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif base in ("float", "half", "bfloat"):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    else:
        raise ValueError(f"function constant '{name}' has type '{type_text}', which the emulator cannot set")
    if not ok:
        raise TypeError(f"function constant '{name}' is a {base}, got {type(value).__name__} {value!r}")
