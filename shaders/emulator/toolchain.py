"""Builds Metal source into a shared library with clang from the ziglang wheel.

Built libraries are cached on disk (cache.py: a private directory, entries checked
before they are loaded), keyed by a hash of the source, the compiler flags, the
compatibility headers and this package's pre-pass, so a second run compiles nothing.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import subprocess
import tempfile
from pathlib import Path

from . import cache, prepass
from .cache import cache_dir, store

INCLUDE_DIR = Path(__file__).parent / "include"

PREPROCESS_FLAGS = (
    "-E",
    "-x", "c++",
    "-std=c++20",
    "-nostdinc",
    "-nostdinc++",
    "-D__METAL_VERSION__=310",
    "-D__METAL__=1",
    "-D__HAVE_BFLOAT__=1",
    "-D__HAVE_SIMDGROUP_MATRIX__=1",
)

# Strict IEEE arithmetic (no contraction, no fast math), half and bfloat rounded
# after every operation as the GPU does, and locals that start poisoned.
COMPILE_FLAGS = (
    "-x", "c++",
    "-std=c++20",
    "-O2",
    "-fPIC",
    "-shared",
    "-nostdlib++",
    "-fno-exceptions",
    "-fno-rtti",
    "-fvisibility=hidden",
    "-ffp-contract=off",
    "-ftrivial-auto-var-init=pattern",
    # Misaligned typed accesses call the runtime's handler (a KernelError), as they
    # are undefined on the GPU.
    "-fsanitize=alignment",
    "-fno-sanitize-recover=alignment",
    "-Xclang", "-ffloat16-excess-precision=none",
    "-Xclang", "-fbfloat16-excess-precision=none",
    "-Wno-unknown-attributes",
    "-Wno-duplicate-decl-specifier",
    "-Wno-unused-command-line-argument",
    "-Wno-c++17-extensions",
)


# Metal's fast math (MTLMathModeFast, which torch selects under PYTORCH_MPS_FAST_MATH=1) assumes no
# Inf and no NaN and allows reassociation, reciprocals, contraction and approximate functions: all
# of clang's -ffast-math, not only its finite-math subset, so a kernel is tested against every
# licence the Mac's compiler has. It also defines __FAST_MATH__, as Metal's compiler does.
FAST_MATH_FLAGS = ("-ffast-math", "-ffp-contract=fast", "-Wno-nan-infinity-disabled")


# The instrumented build (sanitizer.h): every load and store of kernel code calls the runtime's
# checks first. Kernel-address instrumentation links no runtime library (the callbacks are in
# sanitizer.h); clang instruments only generic memory, so that build makes every address space
# generic (address-space mix-ups were already reported by the fast build of the same source).
INSTRUMENT_FLAGS = (
    "-fsanitize=kernel-address",
    "-mllvm", "-asan-instrumentation-with-call-threshold=0",
    "-mllvm", "-asan-stack=0",
    "-mllvm", "-asan-globals=0",
    "-mllvm", "-asan-kernel-mem-intrinsic-prefix",
    # A store to an address already checked for a load in the same block is still reported (ASan's
    # shadow check would be the same; ours counts it, and a store is what marks bytes written).
    "-mllvm", "-asan-opt-same-temp=0",
    "-DMPSK_INSTRUMENTED",
    "-DMPSK_GENERIC_SPACES",
)


@functools.cache
def zig_executable() -> str:
    try:
        import ziglang
    except ImportError as e:  # pragma: no cover - ziglang is a dependency
        raise RuntimeError(
            "the Metal emulator needs clang from the 'ziglang' package: pip install ziglang"
        ) from e
    exe = Path(ziglang.__file__).parent / ("zig.exe" if os.name == "nt" else "zig")
    if not exe.exists():  # pragma: no cover
        raise RuntimeError(f"ziglang is installed but has no zig executable at {exe}")
    return str(exe)


@functools.cache
def _toolchain_fingerprint() -> str:
    h = hashlib.sha256()
    for path in sorted(INCLUDE_DIR.rglob("*")):
        if path.is_file():
            h.update(path.relative_to(INCLUDE_DIR).as_posix().encode())
            h.update(path.read_bytes())
    for path in sorted(Path(prepass.__file__).parent.glob("*.py")):
        h.update(path.read_bytes())
    h.update(Path(__file__).read_bytes())
    version = subprocess.run(
        [zig_executable(), "version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    h.update(version.encode())
    return h.hexdigest()


_ADDRESS_SPACES = {"1": "device", "2": "constant", "3": "threadgroup"}


def _compile_error(stderr: str, build_dir: str) -> SyntaxError:
    """torch.mps.compile_shader raises SyntaxError for compile errors; ours carries clang's
    message with the user's file name and line (not the temporary build directory), and
    names address spaces as Metal does rather than by clang's numbers."""
    lines = [ln for ln in stderr.splitlines() if "argument unused during compilation" not in ln]
    text = "\n".join(lines).strip().replace(build_dir.rstrip("/") + "/", "")
    text = re.sub(
        r"address space '(\d)'",
        lambda m: f"address space '{_ADDRESS_SPACES.get(m.group(1), 'thread')}'",
        text,
    )
    err = SyntaxError(text or "the shader did not compile (no diagnostics)")
    first = re.search(r"^([^\s:]+):(\d+):(?:(\d+):)? (?:fatal )?error:", text, re.M)
    if first:
        err.filename, err.lineno = first.group(1), int(first.group(2))
        err.offset = int(first.group(3)) if first.group(3) else None
    return err


def library_path(source: str, constants: dict[str, bool | int | float] | None = None,
                 fast_math: bool = False, instrumented: bool = False) -> Path:
    """Where the library built from `source` with `constants` (fast-math or not, instrumented or not)
    is cached."""
    text = _toolchain_fingerprint() + "\0" + source
    if fast_math:
        text += "\0fast-math"
    if instrumented:
        text += "\0instrumented"
    if constants:
        text += "\0" + repr(sorted((k, type(v).__name__, v) for k, v in constants.items()))
    key = hashlib.sha256(text.encode()).hexdigest()[:32]
    return cache_dir() / f"{key}.so"


def _clang(args: list[str], tmp: str) -> str:
    """Runs zig's clang in `tmp`; its stdout, or SyntaxError with its diagnostics (and the raw
    diagnostics as the error's `stderr`)."""
    proc = subprocess.run([zig_executable(), "c++", *args], capture_output=True, text=True, cwd=tmp, check=False)
    if proc.returncode != 0:
        err = _compile_error(proc.stderr, tmp)
        err.stderr = proc.stderr
        raise err
    return proc.stdout


# A first build whose errors include one of these passed memory of a named address space where
# another is expected, which Metal rejects: that build's errors stand. Any other failure may be
# what only the address-space model lacks (copies, assignments and member calls of class objects
# in device or threadgroup memory, pointers into them), and the build is retried with every
# address space generic; if that one fails too, the first build's errors stand.
_FROM_NAMED_SPACE = re.compile(
    r"cannot pass pointer to address space '(1|2|3|device|constant|threadgroup)'"
    r"|cannot bind reference in address space '(1|2|3|device|constant|threadgroup)'"
)
_CONVERSION = re.compile(r"of type '([^']*)' (?:with an [lr]value|from incompatible type) of type '([^']*)'")
_CONVERSION_ASSIGN = re.compile(r"assigning to '([^']*)' from incompatible type '([^']*)'")
_DEDUCTION = re.compile(r"deduced type '([^']*)' of \w+ parameter does not match adjusted type '([^']*)'")


def _space(type_text: str) -> int:
    """The address space a clang type spelling names (its `aka` spelling ignored)."""
    text = type_text.split("(aka", 1)[0]
    for n, word in ((1, "device"), (2, "constant"), (3, "threadgroup")):
        if re.search(rf"\b{word}\b|address_space\({n}\)", text):
            return n
    return 0


def _space_mismatch(stderr: str) -> bool:
    """Whether the diagnostics show memory of a named address space passed where another is expected."""
    for line in stderr.splitlines():
        if ": note:" in line and _FROM_NAMED_SPACE.search(line) and "implicit" not in line:
            return True
        d = _DEDUCTION.search(line) if ": note:" in line else None
        if d and "in_space<" not in line and _space(d.group(2)) and _space(d.group(2)) != _space(d.group(1)):
            return True
        if ": error:" in line:
            m = _CONVERSION.search(line) or _CONVERSION_ASSIGN.search(line)
            if m and "in_space<" in line:
                continue  # a type whose space is decided at instantiation: the model's, not the source's
            # Only pointers and references: reading a value out of any space is legal Metal.
            source = m.group(2).split("(aka", 1)[0] if m else ""
            if m and ("*" in source or "&" in source) and _space(source) and _space(source) != _space(m.group(1)):
                return True
    return False


def build(source: str, constants: dict[str, bool | int | float] | None = None, *, fast_math: bool = False,
          instrumented: bool = False) -> Path:
    """Returns the path of the built library for `source` (function constants set by name as
    `constants` says), compiling it if not cached. `fast_math` compiles it with FAST_MATH_FLAGS; the
    runtime's checks do not depend on it (they compare bytes and addresses, never float values).
    `instrumented` makes the checked variant (INSTRUMENT_FLAGS, sanitizer.h): build the plain one
    first, which reports the source's errors as Metal would.

    Raises SyntaxError with the compiler's message when the source does not compile,
    as torch.mps.compile_shader does.
    """
    if not isinstance(source, str):
        raise TypeError(f"shader source must be a str, got {type(source).__name__}")
    if not source.strip():
        raise ValueError("shader source is empty")
    out = library_path(source, constants, fast_math, instrumented)
    if cache.lookup(out):
        return out
    with tempfile.TemporaryDirectory(prefix="mpsk-build-") as tmp:
        src = Path(tmp) / "shader.metal"
        src.write_text(source)
        fast = list(FAST_MATH_FLAGS) if fast_math else []
        preprocessed = _clang([*PREPROCESS_FLAGS, *fast, "-I", str(INCLUDE_DIR / "stub"), str(src)], tmp)
        prepared = prepass.prepare(preprocessed, filename="shader.metal", constants=constants)
        cpp = Path(tmp) / "shader.cpp"
        cpp.write_text('#include "mpsk/metal.h"\n' + prepared.source)
        tmp_out = Path(tmp) / "lib.so"
        compile_args = [*COMPILE_FLAGS, *fast, "-I", str(INCLUDE_DIR), str(cpp), "-o", str(tmp_out)]
        if instrumented:
            _clang([*compile_args, *INSTRUMENT_FLAGS], tmp)
            store(out, tmp_out.read_bytes())
            return out
        try:
            _clang([*compile_args, "-ferror-limit=0"], tmp)
        except SyntaxError as first:
            # Class objects in device or threadgroup memory (MLX's complex and tiles, llama.cpp's
            # blocks) need those spaces generic; only a build with no address-space mix-up in its
            # errors is retried so, so such a mix-up is still reported as Metal reports it.
            if _space_mismatch(getattr(first, "stderr", "")):
                raise
            try:
                _clang([*compile_args, "-DMPSK_GENERIC_SPACES"], tmp)
            except SyntaxError:
                raise first from None
        store(out, tmp_out.read_bytes())
    return out
