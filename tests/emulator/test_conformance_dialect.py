"""Conformance: Metal's C++ dialect where it is not plain C++, one small kernel per construct.

Kernels are written from the Metal Shading Language specification; expected values come
from PyTorch. The vector conversions are checked lane by lane: in Metal every spelling of a
cast between vector types converts each lane (2.2 "Vector Data Types", 2.13 "Type
Conversions"); only as_type reinterprets bits.
"""

import pytest
import torch

from mps_inductor_ext.shaders import compile_shader

H = "#include <metal_stdlib>\nusing namespace metal;\n"

CASTS = (
    H
    + """
using V = half4;
template <typename T, typename U> T convert_via(U u) { return T(u); }
template <typename T> T pair_of(float a, float b) { return T(a, b); }
float sum3(float3 v) { return v.x + v.y + v.z; }
kernel void casts(device const float4* f [[buffer(0)]], device int4* ints [[buffer(1)]],
                  device half4* halves [[buffer(2)]], device float4* back [[buffer(3)]],
                  device short2* shorts [[buffer(4)]], device float* misc [[buffer(5)]],
                  device int4* bits [[buffer(6)]], uint i [[thread_position_in_grid]]) {
  float4 x = f[i];
  ints[i * 4 + 0] = (int4)x;                      // C-style cast
  ints[i * 4 + 1] = int4(x);                      // constructor
  ints[i * 4 + 2] = convert_via<int4>(x);         // through a template parameter
  ints[i * 4 + 3] = static_cast<int4>(x);
  halves[i * 3 + 0] = V(x);                       // through an alias
  halves[i * 3 + 1] = static_cast<V>(x);
  halves[i * 3 + 2] = (V)x;
  back[i] = (float4)(V)x;                         // nested casts
  short2 s(short(x.x), short(x.y));               // direct initialization
  shorts[i] = s;
  misc[i * 2 + 0] = sum3({x.x, x.y, x.z});        // a braced list as a vector argument
  misc[i * 2 + 1] = pair_of<float2>(x.w, 1.0f).y;
  bits[i] = as_type<int4>(x);                     // the one bit cast
}
"""
)


@pytest.fixture(scope="module")
def casts():
    return compile_shader(CASTS, backend="cpu")


def test_vector_casts_convert_lane_by_lane(casts):
    f = torch.tensor([[1.7, -2.3, 3.9, 100.2], [5.5, -0.5, 7.0, -8.9], [1e9, -1e9, 0.25, -0.75]])
    n = len(f)
    ints = torch.zeros(n * 4, 4, dtype=torch.int32)
    halves = torch.zeros(n * 3, 4, dtype=torch.float16)
    back = torch.zeros(n, 4)
    shorts = torch.zeros(n, 2, dtype=torch.int16)
    misc = torch.zeros(n * 2)
    bits = torch.zeros(n, 4, dtype=torch.int32)
    casts.casts(f, ints, halves, back, shorts, misc, bits, threads=n)
    # float -> int rounds toward zero (MSL 2.13); every spelling agrees, lane by lane.
    for form in range(4):
        assert torch.equal(ints.view(n, 4, 4)[:, form], f.trunc().clamp(-(2**31), 2**31 - 1).to(torch.int32)), form
    for form in range(3):
        assert torch.equal(halves.view(n, 3, 4)[:, form], f.to(torch.float16)), form
    assert torch.equal(back, f.to(torch.float16).float())
    assert torch.equal(shorts, f[:, :2].trunc().to(torch.int16))
    torch.testing.assert_close(misc.view(n, 2)[:, 0], f[:, :3].sum(1))
    assert torch.equal(misc.view(n, 2)[:, 1], torch.ones(n))
    assert torch.equal(bits, f.view(torch.int32)), "as_type stays a bit cast"


CLASSES = (
    H
    + """
struct Pair {
  float a;
  float b;
  float sum() const { return a + b; }
  float scaled() const device { return 2 * (a + b); }
  float scaled() const constant { return 2 * (a + b); }
  float scaled() const thread { return 2 * (a + b); }
  operator bool() const constant { return a != 0; }
};
struct Params {
  metal::array<long, 2> sizes;
  float scale;
  static const constant int kLanes = 4;
};
struct Block { half d; uchar qs[6]; };
void fill(device uchar* q, uchar v) { q[0] = v; }
float strided(constant const int64_t strides[2], uint i) { return strides[0] + strides[1] * i; }
kernel void classes(device const Pair* in [[buffer(0)]], device Pair* out [[buffer(1)]],
                    constant Params& params [[buffer(2)]], constant Pair& cp [[buffer(3)]],
                    device float* res [[buffer(4)]], constant int64_t* strides [[buffer(5)]],
                    device const Block* blocks [[buffer(6)]], device Block* blocks_out [[buffer(7)]],
                    uint i [[thread_position_in_grid]], uint l [[thread_index_in_threadgroup]]) {
  threadgroup Pair tgp[8];
  threadgroup Block tgb[8];
  Pair p = in[i];                        // copy out of device memory
  tgp[l] = p;                            // store into threadgroup memory
  Block b = blocks[i];
  tgb[l] = b;
  threadgroup_barrier(mem_flags::mem_threadgroup);
  Pair q = tgp[(l + 1) % 8];
  out[i] = q;                            // store into device memory
  Block c = tgb[7 - l];
  blocks_out[i] = c;
  fill(blocks_out[i].qs + 5, 9);         // a pointer to a member stays a device pointer
  Pair local = p;
  res[i * 4 + 0] = in[i].scaled() + cp.scaled() + local.scaled() + (cp ? 1.0f : 0.0f);
  res[i * 4 + 1] = p.sum() + params.sizes[1] * params.scale + Params::kLanes;
  res[i * 4 + 2] = strided(strides, i);
  res[i * 4 + 3] = float(b.d) + b.qs[2];
}
"""
)


def test_class_types_in_every_address_space():
    """Copies out of and into device, constant and threadgroup memory, member functions
    qualified by the address space of `this`, a metal::array in a constant struct, a static
    constant member, an address-space array parameter, and pointers to members."""
    lib = compile_shader(CLASSES, backend="cpu")
    n = 8
    pairs = torch.arange(2 * n, dtype=torch.float32).view(n, 2)
    out = torch.zeros(n, 2)
    params = torch.zeros(6)  # {long sizes[2]; float scale; pad}: 24 bytes
    params.view(torch.int64)[1] = 3
    params[4] = 0.5
    cp = torch.tensor([1.0, 2.0])
    res = torch.zeros(n * 4)
    strides = torch.tensor([10, 20])
    blocks = torch.zeros(n, 8, dtype=torch.uint8)
    blocks.view(torch.float16)[:, 0] = torch.arange(1, n + 1, dtype=torch.float16)
    blocks[:, 2:] = torch.arange(6 * n, dtype=torch.uint8).view(n, 6)
    blocks_out = torch.zeros(n, 8, dtype=torch.uint8)
    lib.classes(pairs, out, params, cp, res, strides, blocks, blocks_out, threads=n, group_size=n)

    assert torch.equal(out, pairs.roll(-1, 0))
    expected_blocks = blocks.flip(0).clone()
    expected_blocks[:, 7] = 9
    assert torch.equal(blocks_out, expected_blocks)
    s = pairs.sum(1)
    res = res.view(n, 4)
    torch.testing.assert_close(res[:, 0], 2 * s + 2 * 3.0 + 2 * s + 1.0)
    torch.testing.assert_close(res[:, 1], s + 1.5 + 4)
    torch.testing.assert_close(res[:, 2], 10.0 + 20.0 * torch.arange(n))
    torch.testing.assert_close(res[:, 3], blocks.view(torch.float16)[:, 0].float() + blocks[:, 4].float())


def test_address_space_overloads_with_different_bodies_are_an_error():
    """Overloads on `this`'s address space become one function here; if their bodies differ
    the emulator cannot pick the right one, and says so rather than run the wrong one."""
    src = H + """
struct S {
  float v;
  float get() const device { return v; }
  float get() const constant { return 2 * v; }
};
kernel void k(device const S* s [[buffer(0)]], device float* o [[buffer(1)]], uint i [[thread_position_in_grid]]) {
  o[i] = s[i].get();
}
"""
    with pytest.raises(SyntaxError, match="'get' is overloaded on the address space of 'this' or of a class parameter"):
        compile_shader(src, backend="cpu")


PREPASS = (
    H
    + """
template <typename T>
struct Wrap {
  T v;
  operator vec<T, 2>() const { return vec<T, 2>(v, 2 * v); }
};
METAL_FUNC float helper(float x, uint lane [[thread_index_in_simdgroup]]) { return x + lane * 0; }
uint copy_text(device char* dst, constant char* src) {
  uint k = 0;
  while (src[k]) { dst[k] = src[k]; ++k; }
  dst[k] = 0;
  return k;
}
kernel void prepass(device float* out [[buffer(0)]], device char* text [[buffer(1)]],
                    uint l [[thread_index_in_threadgroup]], uint n [[threads_per_threadgroup]]) {
  constexpr int N = 16;
  typedef float acc_t;
  using pair_t = vec<acc_t, 2>;
  threadgroup acc_t scratch[N * 2];
  scratch[l] = l;
  threadgroup_barrier(mem_flags::mem_threadgroup);
  Wrap<float> w{scratch[n - 1 - l]};
  pair_t p = w;
  out[l] = helper(p.x + p.y, l);
  if (l == 0) copy_text(text, "metal");
}
"""
)


def test_prepass_constructs():
    """Threadgroup arrays sized by names local to the kernel, a conversion operator to a vector,
    an attribute on a helper's parameter, and a string literal as a `constant char*`."""
    lib = compile_shader(PREPASS, backend="cpu")
    assert lib.prepass.static_thread_group_memory_length == 16 * 2 * 4
    out = torch.zeros(16)
    text = torch.zeros(8, dtype=torch.uint8)
    lib.prepass(out, text, threads=16, group_size=16)
    torch.testing.assert_close(out, 3.0 * torch.arange(15, -1, -1, dtype=torch.float32))
    assert bytes(text[:6].tolist()) == b"metal\0"


def test_threadgroup_initializer_sets_the_group_storage_once():
    """Apple's compiler takes `threadgroup float buf[32] = {0};` (MLX's layer_norm has it): the
    group's storage starts with the initializer, set when the first thread reaches it, so a
    thread that has already written its slot does not see it undone by a later one."""
    src = H + """
kernel void k(device float* out [[buffer(0)]], uint l [[thread_index_in_threadgroup]],
              uint i [[thread_position_in_grid]]) {
  threadgroup float s[4] = {1, 2, 3, 4}, total = 10;
  s[l] += 100;
  threadgroup_barrier(mem_flags::mem_threadgroup);
  out[i] = s[3 - l] + total;
}
"""
    out = torch.zeros(8)
    compile_shader(src, backend="cpu").k(out, threads=8, group_size=4)
    assert out.tolist() == [114.0, 113.0, 112.0, 111.0] * 2


@pytest.mark.parametrize(
    "decl,match",
    [
        ("thread char* p = \"x\";", "cannot initialize a variable of type 'char \\*'"),
    ],
)
def test_what_metal_rejects_is_rejected(decl, match):
    """A string literal is a `constant char*`, so it cannot become a thread pointer."""
    src = H + f"kernel void k(device float* o [[buffer(0)]], uint i [[thread_position_in_grid]]) {{\n  {decl}\n}}\n"
    with pytest.raises(SyntaxError, match=match):
        compile_shader(src, backend="cpu")


def test_metal_logging_needs_metal_3_2():
    """The emulator compiles as Metal 3.1 (macOS 14, the oldest torch supports), where
    <metal_logging> does not exist."""
    with pytest.raises(SyntaxError, match=r"<metal_logging> needs Metal 3.2"):
        compile_shader("#include <metal_logging>\n" + H + "kernel void k(device float* o [[buffer(0)]]) {}\n",
                       backend="cpu")


def test_torch_headers_resolve_as_torch_resolves_them():
    """#include <c10/metal/...> is inlined from the installed torch's include folder, as
    torch.mps.compile_shader does; its helpers then compile and compute."""
    src = """
#include <c10/metal/utils.h>
#include <c10/metal/reduction_utils.h>
kernel void k(device float* out [[buffer(0)]], constant float* x [[buffer(1)]],
              uint i [[thread_position_in_grid]]) {
  out[i] = c10::metal::max(x[i], 0.5f) + c10::metal::simd_sum(x[i]);
}
"""
    lib = compile_shader(src, backend="cpu")
    x = torch.linspace(-1, 1, 32)
    out = torch.zeros(32)
    lib.k(out, x)
    torch.testing.assert_close(out, x.clamp(min=0.5) + x.sum())
