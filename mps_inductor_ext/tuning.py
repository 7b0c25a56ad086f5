"""Group sizes chosen by measurement, cached per machine.

`benchmarks/ops_vs_native.py` sweeps threads per row for the row kernels and
records the fastest here; an op whose launch policy says "auto" (0) takes the
recorded size for its kernel, dtype and row-length bucket. The file is
`tuning.json` in $MPSK_CACHE_DIR's parent cache folder
(~/.cache/mps_inductor_ext by default), written atomically.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import torch

from .shaders.emulator.cache import cache_dir, store

_lock = threading.Lock()
_memo: dict[str, dict[str, int]] = {}
VALID_THREADS = tuple(range(32, 1025, 32))


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


def _load() -> dict[str, int]:
    p = str(path())
    if p not in _memo:
        try:
            data = json.loads(Path(p).read_text())
        except (OSError, ValueError):
            data = {}
        _memo[p] = {k: v for k, v in data.items() if isinstance(v, int) and v in VALID_THREADS}
    return _memo[p]


def lookup(kernel: str, dtype: torch.dtype, cols: int) -> int | None:
    """The recorded best threads per row, or None."""
    key = _key(kernel, dtype, cols)
    with _lock:
        return _load().get(key)


def table() -> dict[str, int]:
    """Every recorded size (a copy)."""
    with _lock:
        return dict(_load())


def record(kernel: str, dtype: torch.dtype, cols: int, threads: int) -> None:
    if threads not in VALID_THREADS:
        raise ValueError(f"threads must be a multiple of 32 between 32 and 1024, got {threads!r}")
    key = _key(kernel, dtype, cols)
    with _lock:
        table = _load()
        table[key] = threads
        target = path()
        store(target, json.dumps(table, indent=1, sort_keys=True).encode())


def clear() -> None:
    """Forgets every recorded size (the file too)."""
    with _lock:
        _memo.pop(str(path()), None)
        path().unlink(missing_ok=True)
