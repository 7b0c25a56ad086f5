"""The numbers the host and a built emulator library must agree on, mirrored from
include/mpsk/runtime.h (`mpsk_rt::kAbi`) and checked against every library loaded."""

from __future__ import annotations

import ctypes
from enum import IntEnum, IntFlag


class ParamKind(IntEnum):
    BUFFER = 0
    ATTRIBUTE = 1
    THREADGROUP = 2


class TypeCode(IntEnum):
    OTHER = 0
    FLOAT = 1
    HALF = 2
    BFLOAT = 3
    BOOL = 4
    CHAR = 5
    UCHAR = 6
    SHORT = 7
    USHORT = 8
    INT = 9
    UINT = 10
    LONG = 11
    ULONG = 12


class AddressSpace(IntEnum):
    THREAD = 0
    DEVICE = 1
    CONSTANT = 2
    THREADGROUP = 3


class LaunchFlag(IntFlag):
    FIBERS = 1
    FLIP_SCHEDULE = 2
    STRICT = 4


class Status(IntEnum):
    OK = 0
    ERROR = 1
    NEEDS_FIBERS = 2


SIMD_WIDTH = 32
MAX_THREADS_PER_THREADGROUP = 1024
MAX_THREADGROUP_MEMORY = 32768
MAX_ATOMIC_RANGES = 64
MAX_THREADGROUP_PARAMS = 8
NUM_ATTRIBUTES = 18
POISON = 0xFF

TYPE_NAMES = {
    TypeCode.OTHER: "a non-scalar type",
    TypeCode.FLOAT: "float",
    TypeCode.HALF: "half",
    TypeCode.BFLOAT: "bfloat",
    TypeCode.BOOL: "bool",
    TypeCode.CHAR: "char",
    TypeCode.UCHAR: "uchar",
    TypeCode.SHORT: "short",
    TypeCode.USHORT: "ushort",
    TypeCode.INT: "int",
    TypeCode.UINT: "uint",
    TypeCode.LONG: "long",
    TypeCode.ULONG: "ulong",
}


class ParamInfoStruct(ctypes.Structure):
    """mpsk_rt::ParamInfo."""

    _fields_ = [
        ("kind", ctypes.c_int),
        ("index", ctypes.c_int),
        ("is_pointer", ctypes.c_int),
        ("type_code", ctypes.c_int),
        ("lanes", ctypes.c_int),
        ("elem_size", ctypes.c_int),
        ("addr_space", ctypes.c_int),
        ("is_const", ctypes.c_int),
        ("optional", ctypes.c_int),
    ]


def expected_values() -> dict[str, int]:
    """Every ABI number by the name runtime.h gives it."""
    out: dict[str, int] = {}
    for enum in (ParamKind, TypeCode, LaunchFlag, Status):
        out.update({f"{enum.__name__}.{m.name}": int(m) for m in enum})
    out.update(
        SIMD_WIDTH=SIMD_WIDTH,
        MAX_THREADS_PER_THREADGROUP=MAX_THREADS_PER_THREADGROUP,
        MAX_THREADGROUP_MEMORY=MAX_THREADGROUP_MEMORY,
        MAX_ATOMIC_RANGES=MAX_ATOMIC_RANGES,
        MAX_THREADGROUP_PARAMS=MAX_THREADGROUP_PARAMS,
        NUM_ATTRIBUTES=NUM_ATTRIBUTES,
        POISON=POISON,
        PARAM_INFO_BYTES=ctypes.sizeof(ParamInfoStruct),
    )
    return out


def mismatches(dll: ctypes.CDLL) -> list[str]:
    """The ABI numbers on which a built library disagrees with this module, described."""
    dll.mpsk_abi_value.restype = ctypes.c_int
    dll.mpsk_abi_value.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_long)]
    out = []
    for name, want in expected_values().items():
        got = ctypes.c_long()
        if not dll.mpsk_abi_value(name.encode(), ctypes.byref(got)):
            out.append(f"{name}: not defined by the runtime")
        elif got.value != want:
            out.append(f"{name}: runtime {got.value}, host {want}")
    return out
