"""Conformance: what Metal's C++ dialect leaves out is a compile error here too, naming the construct.

The emulator compiles kernels as host C++, where every one of these works; on a Mac none compiles
(MSL specification, "Metal and C++" and the SIMD-group function tables), so a kernel using one would
pass on the emulator and fail on the GPU. Where the two could differ the emulator is the stricter.
"""

import math

import pytest
import torch

from mps_inductor_ext.shaders import compile_shader

H = "#include <metal_stdlib>\nusing namespace metal;\n"


def kernel(body: str, before: str = "") -> str:
    return H + before + "kernel void k(device float* o [[buffer(0)]], uint i [[thread_position_in_grid]]) {\n" + \
        body + "\n}\n"


REJECTED = {
    "libc math": (kernel("o[i] = expf(1.0f);"), r"'expf' is a C library function; Metal has no C library "
                                                 r"\(Metal's is 'exp'\)"),
    "libc sqrtf": (kernel("o[i] = sqrtf(2.0f);"), r"'sqrtf' is a C library function"),
    "printf": (kernel('printf("%f", o[i]);'), r"'printf' is a C library function"),
    "malloc": (kernel("device float* p = (device float*)malloc(4); o[i] = p[0];"), r"'malloc' is a C library"),
    "memcpy": (kernel("float a = 1; memcpy(&o[i], &a, 4);"), r"'memcpy' is a C library function"),
    "non-ASCII identifier": (kernel("float caf\u00e9 = 1; o[i] = caf\u00e9;"), r"non-ASCII character U\+00E9"),
    "non-ASCII string": (kernel('constant char* s = "\u00b1"; o[i] = s[0];'), r"non-ASCII character U\+00B1"),
    "lambda": (kernel("auto twice = [](float x) { return 2 * x; }; o[i] = twice(1.0f);"),
               r"lambda expression: Metal has lambdas from Metal 3.2 \(__METAL_VERSION__ 320\)"),
    "capturing lambda": (kernel("float y = 2; o[i] = [&] { return y; }();"), r"lambda expression"),
    "recursion": (kernel("o[i] = fact(3);", "int fact(int n) { return n <= 1 ? 1 : n * fact(n - 1); }\n"),
                  r"recursive call \(fact -> fact\): Metal has no recursion"),
    "mutual recursion": (kernel("o[i] = ping(3);", "int pong(int n);\nint ping(int n) { return n <= 0 ? 0 : "
                                "pong(n - 1); }\nint pong(int n) { return ping(n); }\n"),
                         r"recursive call \((ping -> pong -> ping|pong -> ping -> pong)\)"),
    "goto": (kernel("int n = 0;\nagain: n++;\nif (n < 3) goto again;\no[i] = n;"), r"'goto' is not supported"),
    "new": (kernel("thread float* p = new float(1); o[i] = *p;"), r"'new': Metal has no dynamic allocation"),
    "delete": (kernel("thread float* p = nullptr; delete p; o[i] = 0;"), r"'delete': Metal has no dynamic"),
    "throw": (kernel("if (i > 100) throw 1;\no[i] = 0;"), r"cannot use 'throw' with exceptions disabled"),
    "try": (kernel("try { o[i] = 0; } catch (...) {}"), r"cannot use 'try' with exceptions disabled"),
    "virtual": (kernel("Shape s; o[i] = s.area();", "struct Shape { virtual float area() { return 1; } };\n"),
                r"'virtual': Metal has no virtual functions"),
    "thread_local": (kernel("o[i] = t;", "thread_local float t = 1;\n"), r"'thread_local': Metal has no thread-local"),
    "static local": (kernel("static float calls = 0; calls += 1; o[i] = calls;"), r"static local variable"),
    "writable program-scope variable": (kernel("o[i] = g;", "float g = 1;\n"),
                                        r"program-scope variable 'g' must be declared in the constant address"),
    "device program-scope variable": (kernel("o[i] = g;", "device float g = 1;\n"), r"program-scope variable 'g'"),
    "VLA": (kernel("int n = i + 1;\nfloat a[n];\na[0] = 1;\no[i] = a[0];"), r"variable length arrays"),
    "function pointer": (kernel("float (*fp)(float) = &twice; o[i] = fp(1);", "float twice(float x) { return x; }\n"),
                         r"function pointer variable: Metal has no"),
    "function pointer member": (kernel("o[i] = 0;", "struct Op { float (*f)(float); };\n"),
                                r"function pointer variable"),
    "64-bit simd_sum": (H + "kernel void k(device long* o [[buffer(0)]], uint i [[thread_position_in_grid]]) "
                            "{ o[i] = simd_sum((long)i); }\n", r"simd_sum on a 64-bit type: Metal has none"),
    "64-bit simd_shuffle_down": (H + "kernel void k(device ulong* o [[buffer(0)]], uint i "
                                     "[[thread_position_in_grid]]) { o[i] = simd_shuffle_down((ulong)i, 1); }\n",
                                 r"simd_shuffle_down on a 64-bit type"),
}


@pytest.mark.parametrize("name", list(REJECTED))
def test_what_metal_lacks_is_a_compile_error_naming_it(name):
    source, message = REJECTED[name]
    with pytest.raises(SyntaxError, match=message):
        compile_shader(source, backend="cpu")


def test_lookalikes_metal_accepts_still_compile_and_run():
    """What the checks must not catch: a kernel's own function named like a C library one, an
    overload that calls Metal's function of the same name, recursion over template arguments
    (a new function each step), a function as a template argument (llama.cpp's dequantizers) or
    as a parameter (c10's atomic helpers), static constexpr locals, deleted members, `constant`
    program-scope data, subscripts and attributes, and non-ASCII text in comments (torch's own
    c10 headers have some: ±, ≈)."""
    src = H + """
// A comment may say ±∞.
constant float table[3] = {1, 2, 4};
constant constexpr int kScale = 2;
inline float memcpy(float x) { return x + 1; }
inline half exp(half x) { return half(exp(float(x))); }
template <int N> float power(float x) { return x * power<N - 1>(x); }
template <> float power<0>(float) { return 1; }
inline float twice(float x) { return 2 * x; }
template <float (*op)(float)> float apply(float x) { return op(x); }
inline float apply_to(float x, float (*op)(float)) { return op(x); }
struct NoCopy { NoCopy() = default; NoCopy(const thread NoCopy&) = delete; float v = 3; };
kernel void k(device float* o [[buffer(0)]], uint i [[thread_position_in_grid]]) {
  static constexpr float kHalf = 0.5f;
  NoCopy n;
  float a[2] = {table[i % 3], float(kScale)};
  o[i] = memcpy(a[0]) + power<3>(a[1]) + apply<twice>(kHalf) + apply_to(0.5f, twice) + n.v + float(exp(half(0)));
}
"""
    out = torch.zeros(4)
    compile_shader(src, backend="cpu").k(out, threads=4)
    expected = [t + 1 + 8 + 1 + 1 + 3 + 1 for t in (1, 2, 4, 1)]
    assert out.tolist() == expected


def test_lambdas_are_refused_only_below_metal_3_2():
    """The version check reads the pre-pass's Metal version: at 3.2 the same lambda passes it."""
    from mps_inductor_ext.shaders.emulator import prepass

    src = "kernel void k(device float* o) { auto f = [](float x) { return x; }; o[0] = f(1.0f); }\n"
    with pytest.raises(SyntaxError, match="lambda expression"):
        prepass.prepare(src, metal_version=310)
    prepass.prepare(src, metal_version=320)


@pytest.mark.parametrize("op, reduce", [("simd_max", max), ("simd_min", min)])
def test_simd_max_and_min_ignore_nan_as_fmax_does(op, reduce):
    """Metal's simd_max and simd_min are fmax and fmin over the SIMD-group: a NaN lane is ignored and
    the result is NaN only when every lane is (c10's simd_max checks simd_any(isnan(x)) itself
    because of this)."""
    src = H + f"""
kernel void k(device float* o [[buffer(0)]], device const float* x [[buffer(1)]],
              uint i [[thread_position_in_grid]]) {{
  o[i] = {op}(x[i]);
}}
"""
    lib = compile_shader(src, backend="cpu")
    x = torch.arange(32, dtype=torch.float32) - 7
    x[[0, 5, 31]] = math.nan
    out = torch.zeros(32)
    lib.k(out, x, threads=32, group_size=32)
    expected = reduce(v for v in x.tolist() if not math.isnan(v))
    assert out.tolist() == [expected] * 32
    all_nan = torch.full((32,), math.nan)
    lib.k(out, all_nan, threads=32, group_size=32)
    assert out.isnan().all()
