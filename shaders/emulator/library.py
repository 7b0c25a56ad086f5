"""The CPU emulator's shader library, with torch.mps.compile_shader's calling convention.

A launch is all-or-nothing: every buffer is staged into a copy with poisoned
red zones around it, the kernel runs on the copies, and the results are
copied back only if the kernel finished cleanly and wrote nothing outside its
buffers. An error therefore leaves every argument as it was.
"""

from __future__ import annotations

import ctypes
import struct
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..errors import KernelError, UndefinedBehaviorWarning
from . import toolchain
from .prepass import DISPATCH_ATTRIBUTES

MAX_THREADS_PER_THREADGROUP = 1024
_MAX_ATOMIC_RANGES = 64  # mpsk_rt::kMaxAtomicRanges
# sizeof(c10::metal::ErrorMessages): an atomic count, then 30 messages of 128 + 128 + 250 chars
# and a line number (512 bytes with padding).
ERROR_MESSAGES_BYTES = 4 + 30 * 512
# How far apart two schedules may leave a float that atomic adds accumulated (relative to
# the larger magnitude): the order of the additions changes their rounding, nothing else.
_ATOMIC_RTOL = {torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}
# mpsk_rt::Flags and mpsk_rt::Status
_FIBERS, _FLIP_SCHEDULE, _STRICT = 1, 2, 4
_NEEDS_FIBERS = 2
SIMD_WIDTH = 32
RED_ZONE = 4096
ALIGN = 64
POISON = 0xFF

# mpsk_rt::TypeCode
_TYPE_NAMES = {
    0: "a non-scalar type",
    1: "float",
    2: "half",
    3: "bfloat",
    4: "bool",
    5: "char",
    6: "uchar",
    7: "short",
    8: "ushort",
    9: "int",
    10: "uint",
    11: "long",
    12: "ulong",
}
_DTYPE_CODES = {
    torch.float32: {1},
    torch.float16: {2},
    torch.bfloat16: {3},
    torch.bool: {4, 6},
    torch.int8: {5},
    torch.uint8: {6, 5},
    torch.int16: {7, 8},
    torch.uint16: {8, 7},
    torch.int32: {9, 10},
    torch.uint32: {10, 9},
    torch.int64: {11, 12},
    torch.uint64: {12, 11},
}
# How a Python scalar is encoded: arg_casts name -> (struct format, type codes it may bind to).
_CASTS = {
    "int64": ("q", {11, 12}),
    "float32": ("f", {1}),
    "fp16": ("e", {2}),
    "bf16": (None, {3}),
    "int32": ("i", {9, 10}),
    "int16": ("h", {7, 8}),
    "int8": ("b", {5, 6}),
    "uint8": ("B", {6, 5}),
}


class _ParamInfo(ctypes.Structure):
    _fields_ = [
        ("kind", ctypes.c_int),
        ("index", ctypes.c_int),
        ("is_pointer", ctypes.c_int),
        ("type_code", ctypes.c_int),
        ("lanes", ctypes.c_int),
        ("elem_size", ctypes.c_int),
        ("addr_space", ctypes.c_int),
        ("is_const", ctypes.c_int),
    ]


@dataclass(frozen=True)
class ParamInfo:
    kind: str  # "buffer" | "attribute"
    index: int
    is_pointer: bool
    type_code: int
    lanes: int
    elem_size: int
    addr_space: int
    is_const: bool

    @property
    def type_name(self) -> str:
        base = _TYPE_NAMES.get(self.type_code, "?")
        return base + (str(self.lanes) if self.lanes > 1 else "")

    @property
    def attribute(self) -> str:
        return DISPATCH_ATTRIBUTES[self.index]


def _bf16_bytes(values: Sequence[float]) -> bytes:
    t = torch.tensor(list(values), dtype=torch.float32).to(torch.bfloat16)
    return t.view(torch.int16).numpy().tobytes()


def _encode_scalars(values: Sequence[int | float], cast: str) -> bytes:
    fmt = _CASTS[cast][0]
    if fmt is None:
        return _bf16_bytes(values)
    try:
        return struct.pack(f"<{len(values)}{fmt}", *values)
    except struct.error as e:
        raise ValueError(str(e)) from None


def _normalize_dims(value, what: str, kernel: str) -> list[int] | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, list, tuple)):
        raise TypeError(
            f"kernel '{kernel}': {what} must be an int or a list of 1 to 3 ints, got {type(value).__name__}"
        )
    dims = [value] if isinstance(value, int) else list(value)
    if not 1 <= len(dims) <= 3:
        raise ValueError(f"kernel '{kernel}': {what} must have 1 to 3 dimensions, got {len(dims)}")
    for d in dims:
        if isinstance(d, bool) or not isinstance(d, int):
            raise TypeError(f"kernel '{kernel}': {what} entries must be ints, got {type(d).__name__}")
        if d < 1:
            raise ValueError(f"kernel '{kernel}': {what} entries must be positive, got {dims}")
        if d >= 2**32:
            raise ValueError(f"kernel '{kernel}': {what} entries must be below 2**32, got {dims}")
    return dims


def _extent(t: torch.Tensor) -> int:
    """Bytes from a tensor's first element to the end of its last one (its strides included)."""
    if t.numel() == 0:
        return 0
    return (sum((n - 1) * st for n, st in zip(t.shape, t.stride(), strict=True)) + 1) * t.element_size()


def _only_atomic_rounding(a: torch.Tensor, b: torch.Tensor, base: int, dtype, ranges) -> bool:
    """Whether two schedules' bytes of one float argument differ only where atomic
    read-modify-writes landed, and there only by rounding (within _ATOMIC_RTOL)."""
    if dtype not in _ATOMIC_RTOL or not ranges:
        return False
    size = torch.empty((), dtype=dtype).element_size()
    x, y = a.clone().view(dtype).float(), b.clone().view(dtype).float()
    differ = (x != y) & ~(x.isnan() & y.isnan())
    addrs = base + differ.nonzero().flatten() * size
    for addr in addrs.tolist():
        if not any(lo <= addr and addr + size <= hi for lo, hi in ranges):
            return False
    dx, dy = x[differ], y[differ]
    return bool(((dx - dy).abs() <= _ATOMIC_RTOL[dtype] * torch.maximum(dx.abs(), dy.abs())).all())


def _raise_reported_errors(kernel: str, errors: torch.Tensor) -> None:
    """Raises for messages a kernel reported through c10/metal/error.h, as torch does at sync."""
    count = int(errors[:4].view(torch.int32)[0])
    if count == 0:
        return
    raw = errors[4:].numpy().tobytes()
    messages = []
    for k in range(min(count, 30)):
        rec = raw[k * 512 : (k + 1) * 512]
        text = rec[256:506].split(b"\0", 1)[0].decode(errors="replace")
        func = rec[128:256].split(b"\0", 1)[0].decode(errors="replace")
        line = int.from_bytes(rec[508:512], "little")
        messages.append(f"{text} (in {func}, line {line})" if func else text)
    raise KernelError(f"kernel '{kernel}' reported {count} error(s): " + "; ".join(messages))


class _Staged:
    """A staging copy of the bytes the arguments cover in one storage (or of one scalar
    argument), between poisoned red zones. Bytes no argument covers (red zones, and gaps
    between views of one storage) stay poisoned, so reading them gives NaN / -1 and
    writing them is reported: a kernel may touch only the tensors it was given."""

    def __init__(self, lo: int, length: int, payload: bytes | None = None):
        self.lo = lo  # address of the user's first covered byte; unused for scalars
        self.length = length
        self.payload = payload
        # The copy sits at the same offset from a 64-byte boundary as the original,
        # so a misaligned view stays misaligned for the kernel.
        raw = torch.empty(RED_ZONE + length + RED_ZONE + ALIGN, dtype=torch.uint8)
        shift = (lo - (raw.data_ptr() + RED_ZONE)) % ALIGN if payload is None else 0
        self.buf = raw[shift : shift + RED_ZONE + length + RED_ZONE]
        self.addr = self.buf.data_ptr() + RED_ZONE
        self.extents: list[tuple[int, int]] = []  # (offset from lo, length)
        self._gaps: list[tuple[int, int]] | None = None
        if payload is not None:
            self.cover(0, length)

    def cover(self, offset: int, length: int) -> None:
        self.extents.append((offset, length))
        self._gaps = None

    @property
    def gaps(self) -> list[tuple[int, int]]:
        """Buffer slices no argument covers (red zones included), as (start, stop) into buf."""
        if self._gaps is None:
            gaps, at = [], 0
            for off, n in sorted(self.extents):
                if RED_ZONE + off > at:
                    gaps.append((at, RED_ZONE + off))
                at = max(at, RED_ZONE + off + n)
            gaps.append((at, len(self.buf)))
            self._gaps = gaps
        return self._gaps

    def refill(self) -> None:
        for a, b in self.gaps:
            self.buf[a:b].fill_(POISON)
        for off, n in self.extents:
            src = self.payload if self.payload is not None else self.lo + off
            ctypes.memmove(self.addr + off, src, n)

    def first_stray_write(self) -> int | None:
        """Offset from lo of the first written byte that no argument covers, if any."""
        for a, b in self.gaps:
            bad = (self.buf[a:b] != POISON).nonzero()
            if len(bad):
                return a + int(bad[0]) - RED_ZONE
        return None

    def write_back(self) -> None:
        if self.payload is None:
            for off, n in self.extents:
                ctypes.memmove(self.lo + off, self.addr + off, n)


class EmulatedKernel:
    """One kernel function of an emulated library (torch's `_mps_MetalKernel`)."""

    def __init__(self, library: EmulatedLibrary, entry: int, name: str):
        self._lib = library
        self._entry = entry
        self.name = name
        dll = library._dll
        n = dll.mpsk_entry_nparams(entry)
        raw = (_ParamInfo * max(n, 1))()
        dll.mpsk_entry_params(entry, raw)
        self.params = [
            ParamInfo(
                "buffer" if p.kind == 0 else "attribute",
                p.index,
                bool(p.is_pointer),
                p.type_code,
                p.lanes,
                p.elem_size,
                p.addr_space,
                bool(p.is_const),
            )
            for p in raw[:n]
        ]
        self.buffers = sorted((p for p in self.params if p.kind == "buffer"), key=lambda p: p.index)
        self._max_threads = min(MAX_THREADS_PER_THREADGROUP, dll.mpsk_entry_max_threads(entry))
        self._tgmem = dll.mpsk_entry_tgmem(entry)
        self._fibers = False

    @property
    def max_threads_per_threadgroup(self) -> int:
        return self._max_threads

    @property
    def thread_execution_width(self) -> int:
        return SIMD_WIDTH

    @property
    def static_thread_group_memory_length(self) -> int:
        return self._tgmem

    def __repr__(self) -> str:
        return f"<emulated Metal kernel '{self.name}'>"

    # -- the compile_shader convenience call ----------------------------------------
    def __call__(self, *args, threads=None, group_size=None, arg_casts=None, error_buf_idx=None) -> None:
        """torch's `_mps_MetalKernel.__call__`. `error_buf_idx` binds the error-report buffer of
        c10/metal/error.h at that index (Inductor passes it for kernels that check indices); a
        report raises here, where torch raises at the next synchronize."""
        casts = self._parse_casts(arg_casts, args)
        threads_dims = _normalize_dims(threads, "threads", self.name)
        if threads_dims is None:
            first = next((a for a in args if isinstance(a, torch.Tensor)), None)
            if first is None:
                raise ValueError(
                    f"kernel '{self.name}': threads is required when no argument is a tensor"
                )
            threads_dims = [first.numel()]
            if threads_dims[0] == 0:
                raise ValueError(
                    f"kernel '{self.name}': threads defaults to the first tensor's numel, which is 0; "
                    f"a dispatch needs at least one thread"
                )
        group_dims = _normalize_dims(group_size, "group_size", self.name)
        bound = dict(enumerate(args))
        if error_buf_idx is None:
            self.dispatch(bound, threads_dims, group_dims, casts)
            return
        if isinstance(error_buf_idx, bool) or not isinstance(error_buf_idx, int) or error_buf_idx < 0:
            raise TypeError(f"kernel '{self.name}': error_buf_idx must be a non-negative int, got {error_buf_idx!r}")
        if error_buf_idx in bound:
            raise ValueError(f"kernel '{self.name}': error_buf_idx {error_buf_idx} is also a positional argument")
        errors = torch.zeros(ERROR_MESSAGES_BYTES, dtype=torch.uint8)
        bound[error_buf_idx] = errors
        self.dispatch(bound, threads_dims, group_dims, casts, runtime_owned={error_buf_idx})
        _raise_reported_errors(self.name, errors)

    def _parse_casts(self, arg_casts, args: Sequence) -> dict[int, str]:
        """arg_casts as {index: cast}. A str casts every scalar and list argument (torch
        skips tensors); a dict naming a tensor is an error, since the cast could not apply."""
        if arg_casts is None:
            return {}
        allowed = ", ".join(c for c in _CASTS if c not in ("int64", "float32"))
        if isinstance(arg_casts, str):
            if arg_casts not in _CASTS or arg_casts in ("int64", "float32"):
                raise ValueError(f"kernel '{self.name}': unsupported cast {arg_casts!r} in arg_casts; one of {allowed}")
            return {i: arg_casts for i, a in enumerate(args) if not isinstance(a, torch.Tensor)}
        if not isinstance(arg_casts, dict):
            raise TypeError(
                f"kernel '{self.name}': arg_casts must be None, a str or a dict of argument index to str, "
                f"got {type(arg_casts).__name__}"
            )
        out = {}
        for idx, cast in arg_casts.items():
            if isinstance(idx, bool) or not isinstance(idx, int) or not isinstance(cast, str):
                raise TypeError(f"kernel '{self.name}': arg_casts entries must be int: str, got {idx!r}: {cast!r}")
            if cast not in _CASTS or cast in ("int64", "float32"):
                raise ValueError(f"kernel '{self.name}': unsupported cast {cast!r} in arg_casts; one of {allowed}")
            out[idx] = cast
        return out

    # -- binding and launch ------------------------------------------------------------
    def dispatch(
        self,
        args: dict[int, object],
        threads: list[int],
        group_size: list[int] | None = None,
        casts: dict[int, str] | None = None,
        runtime_owned: set[int] | None = None,
    ) -> None:
        """Runs the kernel with `args` bound by buffer index; nothing changes if it fails.

        `runtime_owned` names buffers the runtime binds for itself (the error-report buffer):
        their bytes may legitimately differ between the two schedules."""
        casts = casts or {}
        grid, group = self._launch_shape(threads, group_size)
        self._check_attributes(len(threads))
        bindings = self._bind(args, casts)
        self._launch(bindings, grid, group, runtime_owned or set())

    def _launch_shape(self, threads: list[int], group_size: list[int] | None):
        if group_size is not None and len(group_size) != len(threads):
            raise ValueError(
                f"kernel '{self.name}': threads has {len(threads)} dimensions but group_size has "
                f"{len(group_size)}"
            )
        if group_size is None:
            group_size = [min(threads[0], self._max_threads)] if len(threads) == 1 else [self._max_threads]
        grid = list(threads) + [1] * (3 - len(threads))
        group = list(group_size) + [1] * (3 - len(group_size))
        total = group[0] * group[1] * group[2]
        if total > self._max_threads:
            raise ValueError(
                f"kernel '{self.name}': threadgroup size {group_size} ({total} threads) exceeds the "
                f"kernel's limit of {self._max_threads}"
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

    def _bind(self, args: dict[int, object], casts: dict[int, str]) -> dict[int, object]:
        expected = [p.index for p in self.buffers]
        given = sorted(args)
        if given != expected:
            raise TypeError(
                f"kernel '{self.name}' takes buffers {expected} but got arguments for {given}"
            )
        for idx in casts:
            if idx not in args:
                raise ValueError(
                    f"kernel '{self.name}': arg_casts names argument {idx}, but the call has arguments {given}"
                )
        by_index = {p.index: p for p in self.buffers}
        bindings: dict[int, object] = {}
        for idx, value in args.items():
            p = by_index[idx]
            how = "pointer" if p.is_pointer else "reference"
            where = f"kernel '{self.name}' argument {idx} ({how} to {p.type_name})"
            if isinstance(value, torch.Tensor):
                if idx in casts:
                    raise TypeError(f"{where}: arg_casts applies to scalars and lists, not tensors")
                self._check_tensor(value, p, where)
                bindings[idx] = value
                continue
            if isinstance(value, (list, tuple)):
                if not value:
                    raise ValueError(f"{where}: an empty list cannot be a kernel argument")
                values = list(value)
            else:
                values = [value]
            if any(isinstance(v, torch.Tensor) for v in values):
                raise TypeError(
                    f"{where}: a list of tensors (an array of GPU addresses) is not supported by the emulator"
                )
            if any(isinstance(v, bool) for v in values):
                raise TypeError(
                    f"{where}: got a Python bool, which torch.mps.compile_shader would bind as int64; "
                    f"pass int(...) to say so"
                )
            if all(isinstance(v, int) for v in values):
                default = "int64"
            elif all(isinstance(v, float) for v in values):
                default = "float32"
            elif len(values) == 1:
                raise TypeError(f"{where}: unsupported argument type {type(value).__name__}")
            else:
                raise TypeError(f"{where}: a list must hold only ints or only floats, got {values!r}")
            cast = casts.get(idx, default)
            if p.addr_space == 1 and not p.is_const:
                raise TypeError(
                    f"{where}: a Python scalar or list is bound as read-only bytes, so the kernel's writes "
                    f"through this non-const device pointer would be lost; pass a tensor"
                )
            if p.type_code and p.type_code not in _CASTS[cast][1]:
                kind = "int" if default == "int64" else "float"
                why = (
                    f"a Python {kind} binds as {cast}, which the kernel would misread as {p.type_name}"
                    if cast == default
                    else f"arg_casts {cast!r} makes {cast}, which the kernel would misread as {p.type_name}"
                )
                hint = (
                    "; Metal would silently read part of its bytes. Kernels called through the AOTI shim "
                    "(set_arg_int binds int64 only) must declare 'constant long&'; otherwise pass arg_casts"
                    if default == "int64" and cast == default and p.type_code in (5, 6, 7, 8, 9, 10)
                    else "; match the declaration or pass arg_casts"
                    if cast == default
                    else "; use the cast that matches the declaration"
                )
                raise TypeError(f"{where}: {why}{hint}")
            if default == "float32" and cast not in ("float32", "fp16", "bf16"):
                raise TypeError(f"{where}: arg_casts {cast!r} would truncate a Python float; pass an int")
            try:
                payload = _encode_scalars(values, cast)
            except (ValueError, OverflowError) as e:
                shown = values if len(values) > 1 else values[0]
                raise ValueError(f"{where}: {shown!r} does not fit {cast} ({e})") from None
            if not p.is_pointer and p.type_code and len(payload) < p.elem_size * p.lanes:
                raise ValueError(f"{where}: needs {p.elem_size * p.lanes} bytes, got {len(payload)}")
            bindings[idx] = payload
        return bindings

    def _check_tensor(self, t: torch.Tensor, p: ParamInfo, where: str) -> None:
        if t.device.type != "cpu":
            raise ValueError(f"{where}: the emulator runs on CPU tensors, got a tensor on {t.device}")
        if t.dtype not in _DTYPE_CODES:
            raise TypeError(f"{where}: Metal has no {t.dtype} buffers")
        if p.type_code and p.type_code not in _DTYPE_CODES[t.dtype]:
            raise TypeError(f"{where}: got a {t.dtype} tensor, which the kernel would misread as {p.type_name}")
        if not p.is_pointer and p.type_code:
            available = _extent(t)
            if available < p.elem_size * p.lanes:
                raise ValueError(f"{where}: the tensor holds {available} bytes, fewer than one element")

    def _launch(self, bindings: dict[int, object], grid: list[int], group: list[int], runtime_owned: set[int]) -> None:
        spans: dict[int, tuple[int, int]] = {}  # storage address -> covered [lo, hi)
        for value in bindings.values():
            if isinstance(value, torch.Tensor):
                key, start = value.untyped_storage().data_ptr(), value.data_ptr()
                lo, hi = spans.get(key, (start, start))
                spans[key] = (min(lo, start), max(hi, start + _extent(value)))
        staged = {key: _Staged(lo, hi - lo) for key, (lo, hi) in spans.items()}
        owners: dict[int, tuple[_Staged, int, int, str]] = {}  # idx -> (staging, offset, length, what)
        dtypes: dict[int, torch.dtype] = {}
        for idx, value in bindings.items():
            if isinstance(value, torch.Tensor):
                s = staged[value.untyped_storage().data_ptr()]
                off, n = value.data_ptr() - s.lo, _extent(value)
                s.cover(off, n)
                owners[idx] = (s, off, n, f"a {value.dtype} tensor of shape {tuple(value.shape)}")
                dtypes[idx] = value.dtype
            else:
                s = staged[-idx - 1] = _Staged(0, len(value), payload=value)
                owners[idx] = (s, 0, len(value), f"a {len(value)}-byte scalar argument")
        for s in staged.values():
            s.refill()
        nbuf = max(owners, default=-1) + 1
        pointers = [owners[i][0].addr + owners[i][1] if i in owners else None for i in range(nbuf)]
        bufs = (ctypes.c_void_p * max(nbuf, 1))(*pointers)
        grid_c = (ctypes.c_uint * 3)(*grid)
        group_c = (ctypes.c_uint * 3)(*group)
        dll = self._lib._dll

        strict = _STRICT if self._lib.strict else 0
        atomic_ranges: list[tuple[int, int]] = []

        def run(flip: int) -> None:
            flip |= strict
            err = ctypes.create_string_buffer(1024)
            status = dll.mpsk_launch(self._entry, bufs, grid_c, group_c, int(self._fibers) | flip, err, len(err))
            if status == _NEEDS_FIBERS:
                self._fibers = True
                for s in staged.values():
                    s.refill()
                status = dll.mpsk_launch(self._entry, bufs, grid_c, group_c, _FIBERS | flip, err, len(err))
            if status != 0:
                message = err.value.decode(errors="replace")
                raise KernelError(f"kernel '{self.name}': {message}; no argument was changed")
            atomic_ranges.extend(self._lib.atomic_ranges())

        run(0)
        first = {key: s.buf.clone() for key, s in staged.items()}
        for s in staged.values():
            s.refill()
        run(_FLIP_SCHEDULE)
        for idx, (s, off, n, what) in sorted(owners.items()):
            key = next(k for k, v in staged.items() if v is s)
            seg = slice(RED_ZONE + off, RED_ZONE + off + n)
            if idx in runtime_owned or torch.equal(first[key][seg], s.buf[seg]):
                continue
            differ = (first[key][seg] != s.buf[seg]).nonzero()
            if _only_atomic_rounding(first[key][seg], s.buf[seg], s.addr + off, dtypes.get(idx), atomic_ranges):
                continue
            raise KernelError(
                f"kernel '{self.name}': argument {idx} ({what}) ends differently when the threads and "
                f"threadgroups run in another order (first at byte {int(differ[0])}): a missing "
                f"threadgroup_barrier, or threads writing the same element; no argument was changed"
            )
        note = self._lib.undefined_note()
        if note:
            warnings.warn(f"kernel '{self.name}': {note}", UndefinedBehaviorWarning, stacklevel=4)
        for s in dict.fromkeys(o[0] for _, o in sorted(owners.items())):
            r = s.first_stray_write()
            if r is not None:
                raise KernelError(self._stray_message(s, r, owners))
        for s in staged.values():
            s.write_back()

    def _stray_message(self, s: _Staged, r: int, owners: dict) -> str:
        """Names the argument nearest to a stray write at offset r of staging s."""
        mine = [(idx, off, n, what) for idx, (t, off, n, what) in sorted(owners.items()) if t is s]
        past = [(r - off - n, idx, off, n, what) for idx, off, n, what in mine if r >= off + n]
        if past:
            _, idx, off, n, what = min(past)
            detail = f"past its end, at byte {r - off} of a {n}-byte buffer"
        else:
            d, idx, off, n, what = min((off - r, idx, off, n, what) for idx, off, n, what in mine)
            detail = f"{d} bytes before the start of its buffer"
        return f"kernel '{self.name}' wrote out of bounds of argument {idx} ({what}): {detail}; no argument was changed"


class EmulatedLibrary:
    """A compiled shader library on the CPU emulator (torch's `_mps_ShaderLibrary`)."""

    def __init__(self, source: str, strict: bool = False):
        self.source = source
        self.strict = strict
        self.path = toolchain.build(source)
        dll = ctypes.CDLL(str(self.path))
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
        dll.mpsk_atomic_ranges.argtypes = [ctypes.c_void_p, ctypes.c_int]
        dll.mpsk_undefined_note.restype = ctypes.c_char_p
        dll.mpsk_launch.argtypes = [
            ctypes.c_int,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_int,
            ctypes.c_char_p,
            ctypes.c_int,
        ]
        self._dll = dll
        self._kernels = {}
        for e in range(dll.mpsk_num_entries()):
            name = dll.mpsk_entry_name(e).decode()
            self._kernels[name] = EmulatedKernel(self, e, name)

    def __getattr__(self, name: str) -> EmulatedKernel:
        kernels = self.__dict__.get("_kernels", {})
        if name in kernels:
            return kernels[name]
        raise AttributeError(
            f"shader library has no kernel '{name}'; it has {sorted(kernels) or 'none'}"
        )

    def __dir__(self) -> list[str]:
        return sorted(self._kernels)

    def atomic_ranges(self) -> list[tuple[int, int]]:
        """[lo, hi) addresses changed by atomic read-modify-writes in the last launch."""
        out = (ctypes.c_ulong * (2 * _MAX_ATOMIC_RANGES))()
        n = min(self._dll.mpsk_atomic_ranges(out, _MAX_ATOMIC_RANGES), _MAX_ATOMIC_RANGES)
        return [(out[2 * i], out[2 * i + 1]) for i in range(n)]

    def undefined_note(self) -> str:
        """The first undefined (but not erroneous) act of the last launch, or ''."""
        return self._dll.mpsk_undefined_note().decode(errors="replace")

    def attribute_names(self) -> list[str]:
        """The dispatch attributes the compiled runtime knows, in id order."""
        out = []
        i = 0
        while (name := self._dll.mpsk_attr_name(i)) is not None:
            out.append(name.decode())
            i += 1
        return out
