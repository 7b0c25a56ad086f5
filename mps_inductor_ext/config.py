"""Settings of the mpsk backend: pattern switches, Metal emulation, per-op launch policy.

Plain typed attributes of this module, validated on assignment: an unknown key
or a value of the wrong type raises at once rather than being ignored.

    import mps_inductor_ext
    mps_inductor_ext.config.emulate_metal = True
    with mps_inductor_ext.config.patch(emulate_metal=False): ...

Assignment sets a setting for the process. `patch` sets it for the calling thread only, until
the block exits (assignments inside the block end with it too), so threads patching at once
neither see nor undo each other's settings.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import threading
import types
from collections.abc import Iterator
from typing import Any

from .families import NAMES

# One switch per op family, in the pattern pass's order (families.FAMILIES is the list).
PATTERNS = NAMES


@dataclasses.dataclass(frozen=True)
class NormPolicy:
    """rms_norm and layer_norm: one threadgroup per row."""

    threads_per_row: int = 0  # 0: chosen from the row length
    max_threads_per_row: int = 1024
    vector_width: int = 4  # elements per load when the row allows it (1 or 4)

    def __post_init__(self):
        _check_threads(self.threads_per_row, "threads_per_row", allow_auto=True)
        _check_threads(self.max_threads_per_row, "max_threads_per_row")
        if self.vector_width not in (1, 4):
            raise ValueError(f"vector_width must be 1 or 4, got {self.vector_width}")


@dataclasses.dataclass(frozen=True)
class SoftmaxPolicy:
    """softmax: one threadgroup per row; rows longer than `online_above` use the single-read form."""

    threads_per_row: int = 0  # 0: chosen from the row length
    max_threads_per_row: int = 1024
    online_above: int = 4096
    vector_width: int = 4  # elements per load when the row allows it (1 or 4)

    def __post_init__(self):
        _check_threads(self.threads_per_row, "threads_per_row", allow_auto=True)
        _check_threads(self.max_threads_per_row, "max_threads_per_row")
        _check_positive(self.online_above, "online_above")
        if self.vector_width not in (1, 4):
            raise ValueError(f"vector_width must be 1 or 4, got {self.vector_width}")


@dataclasses.dataclass(frozen=True)
class RopePolicy:
    """rope: one thread per rotated pair or passed-through feature, in 1-D groups of this size."""

    threads_per_group: int = 256

    def __post_init__(self):
        _check_threads(self.threads_per_group, "threads_per_group")


@dataclasses.dataclass(frozen=True)
class AttentionPolicy:
    """Flash-style prefill tiles, the decode kernel's shape, and when decode splits the keys.

    The prefill tiles are shrunk (block_kv first, then block_q) until its threadgroup
    memory fits 32 KiB, so large head dims get smaller tiles rather than an error.
    """

    block_q: int = 16  # queries per scalar prefill threadgroup
    block_kv: int = 32  # keys per K/V tile in threadgroup memory (at most; shrunk to fit)
    prefill_simdgroups: int = 4  # SIMD-groups per prefill threadgroup; each owns block_q / this rows
    # Prefill on the matrix units (attn_prefill_mma) where both head dims are multiples of 8: each
    # SIMD-group owns 8 query rows, so a threadgroup takes 8 * prefill_simdgroups queries.
    prefill_matrix: bool = True
    decode_max_q: int = 4  # Sq at or below this takes the decode kernel (at most 8)
    decode_simdgroups: int = 8  # SIMD-groups per decode threadgroup, each walking its own keys
    # One decode threadgroup per (batch, KV head, partition) serving the group's query heads, so
    # K/V are read once for all of them (False: one per query head, each reading K/V itself).
    decode_gqa: bool = True
    split_kv_above: int = 1024  # decode splits Skv into partitions of partition_size above this
    partition_size: int = 256
    # Below split_kv_above the keys are still split, into partitions of at least min_partition keys,
    # until the grid has decode_groups threadgroups (a GPU's worth), as a few KV heads alone leave
    # most of its cores idle.
    decode_groups: int = 64
    min_partition: int = 64

    def __post_init__(self):
        for name in ("block_q", "block_kv", "prefill_simdgroups", "decode_max_q", "decode_simdgroups",
                     "split_kv_above", "partition_size", "decode_groups", "min_partition"):
            _check_positive(getattr(self, name), name)
        if self.block_kv % 8 or self.block_q % 8:
            raise ValueError(f"block_q and block_kv must be multiples of 8, got {self.block_q}, {self.block_kv}")
        if self.block_q % self.prefill_simdgroups:
            raise ValueError(
                f"block_q ({self.block_q}) must be a multiple of prefill_simdgroups ({self.prefill_simdgroups})"
            )
        for name in ("prefill_simdgroups", "decode_simdgroups"):
            if getattr(self, name) > 32:
                raise ValueError(f"{name} must be at most 32 (1024 threads), got {getattr(self, name)}")
        if self.decode_max_q > 8:
            raise ValueError(f"decode_max_q must be at most 8, got {self.decode_max_q}")
        for name in ("partition_size", "min_partition"):
            if getattr(self, name) % 32:
                raise ValueError(f"{name} must be a multiple of 32, got {getattr(self, name)}")
        for name in ("prefill_matrix", "decode_gqa"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")


@dataclasses.dataclass(frozen=True)
class QuantizedPolicy:
    """quantized_linear: up to `matvec_max_rows` rows of x take the matvec kernel, whose SIMD-groups
    each compute `outputs_per_simdgroup` outputs of up to 8 rows, `simdgroups` SIMD-groups per
    threadgroup; more rows take the simdgroup_matrix matmul (32 x 32 tiles)."""

    simdgroups: int = 2
    outputs_per_simdgroup: int = 4
    matvec_max_rows: int = 8

    def __post_init__(self):
        _check_positive(self.simdgroups, "simdgroups")
        _check_positive(self.outputs_per_simdgroup, "outputs_per_simdgroup")
        _check_positive(self.matvec_max_rows, "matvec_max_rows")
        if self.simdgroups > 32:
            raise ValueError(f"simdgroups must be at most 32 (1024 threads), got {self.simdgroups}")
        if self.outputs_per_simdgroup > 32:
            raise ValueError(f"outputs_per_simdgroup must be at most 32, got {self.outputs_per_simdgroup}")


def _check_positive(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _check_threads(value: Any, name: str, allow_auto: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, got {value!r}")
    if allow_auto and value == 0:
        return
    if not 32 <= value <= 1024 or value % 32:
        raise ValueError(f"{name} must be a multiple of 32 between 32 and 1024, got {value}")


def _env_flag(name: str) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise ValueError(f"environment variable {name} must be 0 or 1, got {raw!r}")


def emulate_mps_at_import() -> bool:
    """MPSK_EMULATE_MPS=1: install the emulated mps device when mps_inductor_ext is imported."""
    return _env_flag("MPSK_EMULATE_MPS")


# Run the Metal kernels on the CPU emulator for CPU tensors (the tests use it).
emulate_metal: bool = _env_flag("MPSK_EMULATE_METAL")
# Which pattern families the backend replaces.
patterns: dict[str, bool] = dict.fromkeys(PATTERNS, True)
norm: NormPolicy = NormPolicy()
softmax: SoftmaxPolicy = SoftmaxPolicy()
rope: RopePolicy = RopePolicy()
attention: AttentionPolicy = AttentionPolicy()
quantized: QuantizedPolicy = QuantizedPolicy()

SETTINGS = ("emulate_metal", "patterns", "norm", "softmax", "rope", "attention", "quantized")
_DEFAULTS: dict[str, Any] = {k: globals()[k] for k in SETTINGS}
_TYPES: dict[str, type] = {k: type(v) for k, v in _DEFAULTS.items()}


def _validate(key: str, value: Any) -> Any:
    if key not in _DEFAULTS:
        raise AttributeError(f"mps_inductor_ext.config has no setting {key!r}; settings: {list(SETTINGS)}")
    want = _TYPES[key]
    if want is bool:
        if not isinstance(value, bool):
            raise TypeError(f"config.{key} must be a bool, got {value!r}")
        return value
    if want is dict:
        if not isinstance(value, dict):
            raise TypeError(f"config.{key} must be a dict of pattern name to bool, got {value!r}")
        unknown = set(value) - set(PATTERNS)
        if unknown:
            raise ValueError(f"unknown pattern name(s) {sorted(unknown)}; known: {list(PATTERNS)}")
        bad = {k: v for k, v in value.items() if not isinstance(v, bool)}
        if bad:
            raise TypeError(f"config.patterns values must be bools, got {bad}")
        return {**dict.fromkeys(PATTERNS, True), **value}
    if not isinstance(value, want):
        raise TypeError(f"config.{key} must be a {want.__name__}, got {value!r}")
    return value


class _Patches(threading.local):
    """The calling thread's active `patch` blocks, innermost last: each a dict of the settings it holds."""

    def __init__(self):
        self.frames: list[dict[str, Any]] = []


_patches = _Patches()


class _ConfigModule(types.ModuleType):
    def __getattribute__(self, key: str) -> Any:
        if key in _SETTING_NAMES:
            for frame in reversed(_patches.frames):
                if key in frame:
                    return frame[key]
        return super().__getattribute__(key)

    def __setattr__(self, key: str, value: Any) -> None:
        if key.startswith("_") or key in _MODULE_NAMES:
            super().__setattr__(key, value)
            return
        value = _validate(key, value)
        if _patches.frames:
            _patches.frames[-1][key] = value
        else:
            super().__setattr__(key, value)

    def __delattr__(self, key: str) -> None:
        raise AttributeError(f"config settings cannot be deleted ({key!r}); assign a value instead")


def snapshot() -> dict[str, Any]:
    """The current settings, for cache keys and for restoring."""
    mod = sys.modules[__name__]
    values = {k: getattr(mod, k) for k in SETTINGS}
    return {k: dict(v) if isinstance(v, dict) else v for k, v in values.items()}


@contextlib.contextmanager
def patch(**changes: Any) -> Iterator[None]:
    """Changes settings for the calling thread until the block exits; validated like assignment."""
    validated = {k: _validate(k, v) for k, v in changes.items()}
    frame = dict(validated)
    _patches.frames.append(frame)
    try:
        yield
    finally:
        frames = _patches.frames
        del frames[max(i for i, f in enumerate(frames) if f is frame)]


_SETTING_NAMES = frozenset(SETTINGS)
_MODULE_NAMES = frozenset(globals()) - set(SETTINGS) | {"_MODULE_NAMES", "_SETTING_NAMES"}
sys.modules[__name__].__class__ = _ConfigModule
