"""Binding a call's arguments to a kernel's parameters, with torch.mps.compile_shader's rules:
a tensor binds as a buffer at its storage offset, a Python int as int64 and a float as float32
unless `arg_casts` says otherwise, a list as an array. Anything the kernel would misread (a
dtype that does not match the declaration, a scalar too small for its reference) is an error
naming the argument, raised before anything runs."""

from __future__ import annotations

import struct
from collections.abc import Sequence

import torch

from .abi import AddressSpace, TypeCode
from .staging import extent

T = TypeCode
# The element types a tensor of each dtype may bind to (same-size signedness is a view).
DTYPE_CODES = {
    torch.float32: {T.FLOAT},
    torch.float16: {T.HALF},
    torch.bfloat16: {T.BFLOAT},
    torch.bool: {T.BOOL, T.UCHAR},
    torch.int8: {T.CHAR},
    torch.uint8: {T.UCHAR, T.CHAR},
    torch.int16: {T.SHORT, T.USHORT},
    torch.uint16: {T.USHORT, T.SHORT},
    torch.int32: {T.INT, T.UINT},
    torch.uint32: {T.UINT, T.INT},
    torch.int64: {T.LONG, T.ULONG},
    torch.uint64: {T.ULONG, T.LONG},
}
# How a Python scalar is encoded: arg_casts name -> (struct format, type codes it may bind to).
CASTS = {
    "int64": ("q", {T.LONG, T.ULONG}),
    "float32": ("f", {T.FLOAT}),
    "fp16": ("e", {T.HALF}),
    "bf16": (None, {T.BFLOAT}),
    "int32": ("i", {T.INT, T.UINT}),
    "int16": ("h", {T.SHORT, T.USHORT}),
    "int8": ("b", {T.CHAR, T.UCHAR}),
    "uint8": ("B", {T.UCHAR, T.CHAR}),
}
_NARROW_INTS = {T.CHAR, T.UCHAR, T.SHORT, T.USHORT, T.INT, T.UINT}


def bf16_bytes(values: Sequence[float]) -> bytes:
    t = torch.tensor(list(values), dtype=torch.float32).to(torch.bfloat16)
    return t.view(torch.int16).numpy().tobytes()


def encode_scalars(values: Sequence[int | float], cast: str) -> bytes:
    fmt = CASTS[cast][0]
    if fmt is None:
        return bf16_bytes(values)
    try:
        return struct.pack(f"<{len(values)}{fmt}", *values)
    except struct.error as e:
        raise ValueError(str(e)) from None


def normalize_dims(value, what: str, kernel: str) -> list[int] | None:
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


def parse_casts(kernel: str, arg_casts, args: Sequence) -> dict[int, str]:
    """arg_casts as {index: cast}. A str casts every scalar and list argument (torch
    skips tensors); a dict naming a tensor is an error, since the cast could not apply."""
    if arg_casts is None:
        return {}
    allowed = ", ".join(c for c in CASTS if c not in ("int64", "float32"))
    if isinstance(arg_casts, str):
        if arg_casts not in CASTS or arg_casts in ("int64", "float32"):
            raise ValueError(f"kernel '{kernel}': unsupported cast {arg_casts!r} in arg_casts; one of {allowed}")
        return {i: arg_casts for i, a in enumerate(args) if not isinstance(a, torch.Tensor)}
    if not isinstance(arg_casts, dict):
        raise TypeError(
            f"kernel '{kernel}': arg_casts must be None, a str or a dict of argument index to str, "
            f"got {type(arg_casts).__name__}"
        )
    out = {}
    for idx, cast in arg_casts.items():
        if isinstance(idx, bool) or not isinstance(idx, int) or not isinstance(cast, str):
            raise TypeError(f"kernel '{kernel}': arg_casts entries must be int: str, got {idx!r}: {cast!r}")
        if cast not in CASTS or cast in ("int64", "float32"):
            raise ValueError(f"kernel '{kernel}': unsupported cast {cast!r} in arg_casts; one of {allowed}")
        out[idx] = cast
    return out



def bind(kernel: str, buffers: list, args: dict[int, object], casts: dict[int, str]) -> dict[int, object]:
    """Each argument as the launch passes it: a tensor, or the encoded bytes of scalars.

    Every buffer must be bound except those behind a [[function_constant]] that is off."""
    expected = [p.index for p in buffers]
    required = [p.index for p in buffers if not p.optional]
    given = sorted(args)
    if not set(required) <= set(given) or not set(given) <= set(expected):
        optional = sorted(set(expected) - set(required))
        also = f" (and optionally {optional})" if optional else ""
        raise TypeError(f"kernel '{kernel}' takes buffers {required}{also} but got arguments for {given}")
    for idx in casts:
        if idx not in args:
            raise ValueError(
                f"kernel '{kernel}': arg_casts names argument {idx}, but the call has arguments {given}"
            )
    by_index = {p.index: p for p in buffers}
    bindings: dict[int, object] = {}
    for idx, value in args.items():
        p = by_index[idx]
        how = "pointer" if p.is_pointer else "reference"
        where = f"kernel '{kernel}' argument {idx} ({how} to {p.type_name})"
        if isinstance(value, torch.Tensor):
            if idx in casts:
                raise TypeError(f"{where}: arg_casts applies to scalars and lists, not tensors")
            check_tensor(value, p, where)
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
        if p.addr_space == AddressSpace.DEVICE and not p.is_const:
            raise TypeError(
                f"{where}: a Python scalar or list is bound as read-only bytes, so the kernel's writes "
                f"through this non-const device pointer would be lost; pass a tensor"
            )
        if p.type_code and p.type_code not in CASTS[cast][1]:
            kind = "int" if default == "int64" else "float"
            why = (
                f"a Python {kind} binds as {cast}, which the kernel would misread as {p.type_name}"
                if cast == default
                else f"arg_casts {cast!r} makes {cast}, which the kernel would misread as {p.type_name}"
            )
            hint = (
                "; Metal would silently read part of its bytes. Kernels called through the AOTI shim "
                "(set_arg_int binds int64 only) must declare 'constant long&'; otherwise pass arg_casts"
                if default == "int64" and cast == default and p.type_code in _NARROW_INTS
                else "; match the declaration or pass arg_casts"
                if cast == default
                else "; use the cast that matches the declaration"
            )
            raise TypeError(f"{where}: {why}{hint}")
        if default == "float32" and cast not in ("float32", "fp16", "bf16"):
            raise TypeError(f"{where}: arg_casts {cast!r} would truncate a Python float; pass an int")
        try:
            payload = encode_scalars(values, cast)
        except (ValueError, OverflowError) as e:
            shown = values if len(values) > 1 else values[0]
            raise ValueError(f"{where}: {shown!r} does not fit {cast} ({e})") from None
        if not p.is_pointer and p.type_code and len(payload) < p.elem_size * p.lanes:
            raise ValueError(f"{where}: needs {p.elem_size * p.lanes} bytes, got {len(payload)}")
        bindings[idx] = payload
    return bindings

# Device types whose tensors live in host memory: "cpu", and "mps" once the emulated mps device
# (mps_inductor_ext.emulated_mps) is installed.
HOST_MEMORY_DEVICES = {"cpu"}


def check_tensor(t: torch.Tensor, p, where: str) -> None:
    if t.device.type not in HOST_MEMORY_DEVICES:
        raise ValueError(f"{where}: the emulator runs on CPU tensors, got a tensor on {t.device}")
    if t.dtype not in DTYPE_CODES:
        raise TypeError(f"{where}: Metal has no {t.dtype} buffers")
    if p.type_code and p.type_code not in DTYPE_CODES[t.dtype]:
        raise TypeError(f"{where}: got a {t.dtype} tensor, which the kernel would misread as {p.type_name}")
    if not p.is_pointer and p.type_code:
        available = extent(t)
        if available < p.elem_size * p.lanes:
            raise ValueError(f"{where}: the tensor holds {available} bytes, fewer than one element")

