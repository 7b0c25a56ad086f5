"""Choices made by measurement on this machine: group sizes, and mpsk kernel or native op.

`benchmarks/ops_vs_native.py` sweeps threads per row for the row kernels and
records the fastest here; an op whose launch policy says "auto" (0) takes the
recorded size for its kernel, dtype and row-length bucket. `python -m
mps_inductor_ext tune` times each op's kernel against its ATen reference per
dtype and shape bucket and records the winner (`record_choice`); the eager op
and the compiled program take the native op where it won (`prefers_native`).
The file is `tuning.json` in $MPSK_CACHE_DIR's parent cache folder
(~/.cache/mps_inductor_ext by default), written atomically; the graph pass's
uuid hashes every entry, so a new choice recompiles.
"""

from __future__ import annotations

import contextlib
import json
import math
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from .shaders.emulator.cache import cache_dir, store

_lock = threading.Lock()
_memo: dict[str, dict[str, int | str]] = {}
VALID_THREADS = tuple(range(32, 1025, 32))
CHOICES = ("mpsk", "native")  # what `tune` records per op, dtype and shape bucket
CHOICE_PREFIX = "choice:"


def path() -> Path:
    return cache_dir().parent / "tuning.json"


def bucket(cols: int) -> int:
    """Rows are grouped by the power of two at or above their length."""
    if isinstance(cols, bool) or not isinstance(cols, int) or cols < 1:
        raise ValueError(f"row length must be a positive int, got {cols!r}")
    return 1 << (cols - 1).bit_length()


def _key(kernel: str, dtype: torch.dtype, cols: int) -> str:
    if not isinstance(kernel, str) or not kernel:
        raise ValueError(f"kernel must be a non-empty str, got {kernel!r}")
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype, got {dtype!r}")
    return f"{kernel}/{str(dtype).removeprefix('torch.')}/{bucket(cols)}"


def _valid(key: object, value: object) -> bool:
    if not isinstance(key, str):
        return False
    if key.startswith(CHOICE_PREFIX):
        return value in CHOICES
    return isinstance(value, int) and not isinstance(value, bool) and value in VALID_THREADS


def _load() -> dict[str, int | str]:
    p = str(path())
    if p not in _memo:
        try:
            data = json.loads(Path(p).read_text())
        except (OSError, ValueError):
            data = {}
        if not isinstance(data, dict):
            data = {}
        _memo[p] = {k: v for k, v in data.items() if _valid(k, v)}
    return _memo[p]


def lookup(kernel: str, dtype: torch.dtype, cols: int) -> int | None:
    """The recorded best threads per row, or None."""
    key = _key(kernel, dtype, cols)
    with _lock:
        value = _load().get(key)
    return value if isinstance(value, int) else None


def table() -> dict[str, int | str]:
    """Every recorded size (a copy)."""
    with _lock:
        return dict(_load())


def record(kernel: str, dtype: torch.dtype, cols: int, threads: int) -> None:
    if threads not in VALID_THREADS:
        raise ValueError(f"threads must be a multiple of 32 between 32 and 1024, got {threads!r}")
    _store(_key(kernel, dtype, cols), threads)


def _store(key: str, value: int | str) -> None:
    with _lock:
        table = _load()
        table[key] = value
        store(path(), json.dumps(table, indent=1, sort_keys=True).encode())


# ------------------------------------------------------------------ mpsk kernel or native op


def shape_bucket(args: Sequence[object]) -> str | None:
    """The bucket an op call's measurement stands for: each tensor argument as (rows, last dim)
    rounded up to powers of two, and the structural int and bool arguments (softmax's dim,
    is_causal, ...) as given; floats (eps, scale) do not change the choice. None where a size is
    symbolic (a graph compiled for dynamic shapes): no measured bucket covers every size."""
    if not isinstance(args, (list, tuple)):
        raise TypeError(f"args must be a list or tuple of the op's arguments, got {type(args).__name__}")
    parts = []
    for a in args:
        if isinstance(a, torch.Tensor):
            sizes = tuple(a.shape)
            if not all(isinstance(d, int) for d in sizes):
                return None
            cols = sizes[-1] if sizes else 1
            rows = math.prod(sizes[:-1]) if len(sizes) > 1 else 1
            parts.append("0" if 0 in sizes else f"{bucket(rows)}x{bucket(cols)}")
        elif isinstance(a, bool) or a is None or isinstance(a, int):
            parts.append(str(a))
        elif isinstance(a, torch.SymInt):
            return None
    return ",".join(parts)


def schema_args(op: torch._ops.OpOverload, args: Sequence[object], kwargs: dict) -> tuple:
    """Every argument of a call of custom op `op` in schema order, defaults filled in: the tuple the
    eager op passes to `prefers_native`, so `tune`, the eager op and the decompositions look up the
    same key however a call spelled its arguments."""
    out = list(args)
    for arg in op._schema.arguments[len(args):]:
        out.append(kwargs.get(arg.name, arg.default_value))
    return tuple(out)


def _choice_key(op: str, dtype: torch.dtype, shapes: str) -> str:
    if not isinstance(op, str) or not op:
        raise ValueError(f"op must be a non-empty str, got {op!r}")
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype, got {dtype!r}")
    if not isinstance(shapes, str) or not shapes:
        raise ValueError(f"shape bucket must be a non-empty str (tuning.shape_bucket), got {shapes!r}")
    return f"{CHOICE_PREFIX}{op}/{str(dtype).removeprefix('torch.')}/{shapes}"


def _dtype_of(args: Sequence[object]) -> torch.dtype | None:
    return next((a.dtype for a in args if isinstance(a, torch.Tensor)), None)


def choice_key(op: str, args: Sequence[object]) -> str | None:
    """The tuning-cache key of an op call (op, first tensor's dtype, shape bucket), or None where the
    call has no tensor or a symbolic size."""
    shapes, dtype = shape_bucket(args), _dtype_of(args)
    return None if shapes is None or dtype is None else _choice_key(op, dtype, shapes)


def record_choice(op: str, args: Sequence[object], choice: str) -> str:
    """Records that `choice` ("mpsk" or "native") was faster for calls like `op(*args)`; returns the key."""
    if choice not in CHOICES:
        raise ValueError(f"choice must be one of {CHOICES}, got {choice!r}")
    key = choice_key(op, args)
    if key is None:
        raise ValueError(f"cannot record a choice for {op}: its arguments have no tensor or a symbolic size")
    _store(key, choice)
    return key


def prefers_native(op: str, args: Sequence[object]) -> bool:
    """Whether `tune` measured the native op faster than the mpsk kernel for calls like `op(*args)`
    on this machine. False where nothing was measured: the kernel is the default."""
    if getattr(_kernels_only, "on", False):
        return False
    with _lock:
        if not any(v == "native" for v in _load().values()):  # the usual case: nothing to look up
            return False
    key = choice_key(op, args)
    if key is None:
        return False
    with _lock:
        return _load().get(key) == "native"


_kernels_only = threading.local()


@contextlib.contextmanager
def kernels_only() -> Iterator[None]:
    """Ignores recorded choices on this thread: the mpsk kernel runs wherever Metal does (`tune`
    times it, and `profile` counts it, whatever was recorded before)."""
    before = getattr(_kernels_only, "on", False)
    _kernels_only.on = True
    try:
        yield
    finally:
        _kernels_only.on = before


def clear() -> None:
    """Forgets every recorded size (the file too)."""
    with _lock:
        _memo.pop(str(path()), None)
        path().unlink(missing_ok=True)
