"""Conformance: constructs that MLX's, llama.cpp's and PyTorch's shipped kernels use, found by
compiling those kernels on the emulator; each is reproduced here by a small kernel of our own
and checked for its result, not only that it compiles."""

import pytest
import torch

from mps_inductor_ext.shaders import compile_shader

H = "#include <metal_stdlib>\nusing namespace metal;\n"


def _one(src: str, kernel: str, n: int, *extra, group=None, threads=None, dtype=torch.float32) -> torch.Tensor:
    out = torch.zeros(n, dtype=dtype)
    lib = compile_shader(H + src, backend="cpu")
    getattr(lib, kernel)(out, *extra, threads=threads or n, group_size=group or threads or n)
    return out


def test_apple_internal_builtins():
    """MLX's bf16 math calls metal_stdlib's own builtins with a fast-math flag, and its traits
    use `_disjunction`."""
    src = """
template <typename T> constexpr constant bool is_real = _disjunction<is_same<T, float>, is_same<T, half>>::value;
kernel void k(device float* out [[buffer(0)]], uint i [[thread_position_in_grid]]) {
  float x = float(i) * 0.25f;
  static_assert(is_real<half> && !is_real<int>, "");
  out[i] = __metal_exp(x, __METAL_MAYBE_FAST_MATH__) + __metal_simd_sum(x)
           + __metal_fmax3(x, 1.0f, 0.5f, __METAL_FAST_MATH__) + __metal_get_simdgroup_size(ushort(0));
}
"""
    x = torch.arange(32) * 0.25
    torch.testing.assert_close(_one(src, "k", 32), x.exp() + x.sum() + x.clamp(min=1.0) + 32)


def test_constructors_and_free_functions_overloaded_on_address_space():
    """MLX's complex type: constructors and conversion operators qualified by `this`'s address
    space, and `operator+=` defined once per address space with one body."""
    src = """
struct Acc {
  float v;
  Acc() thread : v(1) {}
  Acc() threadgroup : v(1) {}
  float get() const { return v; }
};
thread Acc& operator+=(thread Acc& a, float x) { a.v += x; return a; }
threadgroup Acc& operator+=(threadgroup Acc& a, float x) { a.v += x; return a; }
template <typename T> struct Cx {
  T re, im;
  constexpr Cx(vec<T, 2> v) thread : re(v.x), im(v.y) {}
  constexpr Cx(vec<T, 2> v) device : re(v.x), im(v.y) {}
  constexpr operator vec<T, 2>() const thread { return vec<T, 2>(re, im); }
  constexpr operator vec<T, 2>() const device { return vec<T, 2>(re, im); }
};
struct Tag { constexpr Tag(constant char* s) constant : first(s[0]) {} char first; };
constant Tag tag("metal");
kernel void k(device float* out [[buffer(0)]], uint i [[thread_position_in_grid]]) {
  Acc a;
  a += float(i);
  Cx<float> c(float2(2.0f, 3.0f));
  float2 back = c;
  out[i] = a.get() + float(tag.first) + back.x * back.y;
}
"""
    torch.testing.assert_close(_one(src, "k", 8), torch.arange(8) + 1.0 + ord("m") + 6.0)


def test_binding_attributes_outside_kernels():
    """Helpers and function typedefs carry [[threadgroup(0)]] / dispatch attributes (MLX's sort,
    llama.cpp's argsort typedef); Metal ignores them there."""
    src = """
struct Helper {
  static void run(threadgroup float* scratch [[threadgroup(0)]], device float* out [[buffer(0)]], uint i) {
    scratch[i] = float(i);
    out[i] = scratch[i] * 2.0f;
  }
};
typedef void (fill_t)(device float* out, threadgroup float* tmp [[threadgroup(0)]], uint i [[thread_position_in_grid]]);
template <int S>
kernel void fill(device float* out, threadgroup float* tmp [[threadgroup(0)]], uint i [[thread_position_in_grid]]) {
  Helper::run(tmp, out, i);
  out[i] += float(S);
}
template [[host_name("fill3")]] kernel fill_t fill<3>;
"""
    lib = compile_shader(H + src, backend="cpu")
    out = torch.zeros(8)
    lib.fill3.dispatch({0: out}, [8], [8], threadgroup_memory={0: 32})
    torch.testing.assert_close(out, torch.arange(8) * 2.0 + 3)


def test_deduced_explicit_instantiation_and_array_parameter():
    """MLX's conv instantiates by parameter types alone (`void k(..., constant P<1>*, ...)`);
    PyTorch passes `constant long strides[2]` after attributed parameters."""
    src = """
template <int N> struct Params { int dims[N]; };
template <int N>
kernel void k(device float* out [[buffer(0)]], constant Params<N>* p [[buffer(1)]],
              constant const long strides[2], uint i [[thread_position_in_grid]]) {
  out[i] = float(p->dims[N - 1] + strides[1] * i);
}
template [[host_name("k2")]] [[kernel]] void k(device float* out [[buffer(0)]], constant Params<2>* p [[buffer(1)]],
                                               constant const long strides[2], uint i [[thread_position_in_grid]]);
"""
    lib = compile_shader(H + src, backend="cpu")
    out = torch.zeros(4)
    lib.k2(out, torch.tensor([5, 7], dtype=torch.int32), torch.tensor([0, 10]), threads=4)
    torch.testing.assert_close(out, 7.0 + 10 * torch.arange(4))


def test_class_objects_through_template_parameters_and_casts():
    """A template kernel over a class type, a matrix and a template struct in threadgroup
    memory, and plain structs copied through cast pointers (llama.cpp's chunked copies)."""
    src = """
struct C {
  float re, im;
  C() = default;
  C(float x) : re(x), im(1) {}
};
template <typename T>
kernel void fill(device T* out [[buffer(0)]], uint i [[thread_position_in_grid]]) { out[i] = T(float(i)); }
template [[host_name("fill_c")]] kernel void fill<C>(device C*, uint);

template <typename V> struct Pair { uint idx; V val; };
template <typename M>
kernel void tiles(device float* out [[buffer(0)]], threadgroup M* tile [[threadgroup(0)]],
                  uint i [[thread_position_in_grid]]) {
  threadgroup Pair<float> pairs[8];
  Pair<float> p;
  p.idx = i;
  p.val = float(i) * 0.5f;
  pairs[i] = p;
  tile[i] = M(2.0f);
  threadgroup_barrier(mem_flags::mem_threadgroup);
  Pair<float> q = pairs[7 - i];
  out[i] = q.val + q.idx + float(tile[7 - i][1][1]);
}
template [[host_name("tiles_h")]] kernel void tiles<half4x4>(device float*, threadgroup half4x4*, uint);

struct alignas(8) Chunk { uchar b[8]; };
kernel void chunks(device float* dst [[buffer(0)]], device const float* src [[buffer(1)]],
                   uint i [[thread_position_in_grid]]) {
  threadgroup float tmp[16];
  *((threadgroup Chunk*)(&tmp[2 * i])) = *((const device Chunk*)(&src[2 * i]));
  threadgroup_barrier(mem_flags::mem_threadgroup);
  *((device Chunk*)(&dst[2 * i])) = *((threadgroup Chunk*)(&tmp[14 - 2 * i]));
}
"""
    lib = compile_shader(H + src, backend="cpu")
    c = torch.zeros(4, 2)
    lib.fill_c(c, threads=4)
    assert c.tolist() == [[0, 1], [1, 1], [2, 1], [3, 1]]
    out = torch.zeros(8)
    lib.tiles_h.dispatch({0: out}, [8], [8], threadgroup_memory={0: 8 * 32})
    i = torch.arange(8.0)
    torch.testing.assert_close(out, (7 - i) * 0.5 + (7 - i) + 2.0)
    src_t, dst = torch.arange(16.0), torch.zeros(16)
    lib.chunks(dst, src_t, threads=8)
    assert torch.equal(dst, src_t.view(8, 2).flip(0).flatten())


def test_simdgroup_matrix_operators_and_qualified_vec():
    """MLX's conv multiplies simdgroup matrices with `*` and adds with `+`; its fft builds vectors
    as `metal::vec<T, 2>(re, im)`."""
    src = """
kernel void k(device float* out [[buffer(0)]], uint l [[thread_index_in_simdgroup]]) {
  simdgroup_float8x8 a = make_filled_simdgroup_matrix<float, 8>(1.0f);
  simdgroup_float8x8 b = make_filled_simdgroup_matrix<float, 8>(2.0f);
  simdgroup_float8x8 c = (a * b) + a;
  simdgroup_store(c, out, 8);
  metal::vec<float, 2> v = metal::vec<float, 2>(-1, 0.5f);
  if (l == 0) out[64] = v.x + v.y;
}
"""
    out = _one(src, "k", 65, threads=32)
    assert torch.equal(out[:64], torch.full((64,), 17.0)) and out[64].item() == -0.5


def test_threadgroup_size_from_a_local_type():
    """MLX's steel attention sizes threadgroup memory with `decltype(tile)::kRows`."""
    src = """
template <typename T> struct Frag { static constexpr int kRows = 4; T v[4]; };
template <typename T>
kernel void k(device T* out [[buffer(0)]], uint i [[thread_position_in_grid]]) {
  Frag<T> f;
  constexpr int R = decltype(f)::kRows;
  const float unrelated = out[0];   // a run-time local the size function must not copy
  threadgroup T buf[R * 8];
  buf[i] = T(R) + unrelated * 0;
  threadgroup_barrier(mem_flags::mem_threadgroup);
  out[i] = buf[31 - i];
}
template [[host_name("k_f")]] kernel void k<float>(device float*, uint);
"""
    lib = compile_shader(H + src, backend="cpu")
    assert lib.k_f.static_thread_group_memory_length == 4 * 8 * 4
    out = torch.zeros(32)
    lib.k_f(out, threads=32)
    assert torch.equal(out, torch.full((32,), 4.0))


def test_small_constructs():
    """`*=` beside a plain-struct local of the same name, a kernel named `b`, `#pragma
    unroll(MACRO)`, matrix / scalar, `device const void*`, `coherent(device)`, MLX's
    `static constant constexpr const bool` function constant, and `short2 v(g * n, l)`."""
    src = """
#define NK 4
struct Params { float s; };
constant constexpr static const bool flip [[function_constant(0)]];
kernel void ka(device float* o [[buffer(0)]], constant Params& p [[buffer(1)]], uint i [[thread_position_in_grid]]) {
  Params scale = p;
  o[i] = scale.s;
}
kernel void b(device float* o [[buffer(0)]], device const void* raw [[buffer(1)]],
              volatile coherent(device) device uint* flag [[buffer(2)]], uint i [[thread_position_in_grid]]) {
  const float scale = 2.0f;
  float acc = 0;
  #pragma unroll(NK)
  for (int j = 0; j < NK; j++) acc += float(j);
  float2x2 m(float2(4.0f, 8.0f), float2(2.0f, 6.0f));
  float2x2 h = m / 2.0f;
  constexpr int n = 4;
  short g = short(i);
  short2 v(g * n, 1);
  o[i] = (acc + h[0][1] + ((device const float*)raw)[i] + v.x + (flip ? 100.0f : 0.0f)) * scale;
  if (i == 0) flag[0] = 1;
}
"""
    lib = compile_shader(H + src, backend="cpu")
    o = torch.zeros(4)
    lib.ka(o, torch.tensor([3.5]), threads=4)
    assert torch.equal(o, torch.full((4,), 3.5))
    fn = lib.get_kernel_function("b", constants={"flip": True})
    raw, flag = torch.arange(4.0), torch.zeros(1, dtype=torch.int32)

    def block():
        fn.start_encoding()
        fn.set_arg_tensor(0, o)
        fn.set_arg_tensor(1, raw)
        fn.set_arg_tensor(2, flag)
        fn.dispatch(4)

    fn.run_command_block(block)
    i = torch.arange(4.0)
    torch.testing.assert_close(o, (6 + 4 + i + 4 * i + 100) * 2)
    assert flag.item() == 1


FALLBACK = """
struct C {
  float re, im;
  C() = default;
  C(float x) : re(x), im(2 * x) {}
};
template <typename T> void put(threadgroup T* dst, uint i, T v) { dst[i] = v; }
template <typename T>
kernel void k(device T* out [[buffer(0)]], uint i [[thread_position_in_grid]]) {
  threadgroup T buf[8];
  put(buf, i, T(float(i)));
  threadgroup_barrier(mem_flags::mem_threadgroup);
  out[i] = buf[7 - i];
}
template [[host_name("k_c")]] kernel void k<C>(device C*, uint);
"""


def test_class_objects_handed_between_templates_compile_and_compute():
    """A class type through a kernel template into a helper template that deduces from its
    `threadgroup T*` (MLX's sort, scan and reduce): clang's address spaces cannot type this,
    so after a first build that finds no address-space mix-up, memory is made generic."""
    lib = compile_shader(H + FALLBACK, backend="cpu")
    out = torch.zeros(8, 2)
    lib.k_c(out, threads=8)
    i = torch.arange(7, -1, -1, dtype=torch.float32)
    assert torch.equal(out, torch.stack([i, 2 * i], 1))


def test_an_address_space_mix_up_is_still_reported_beside_them():
    """The fallback is not taken when the first build also shows a pointer passed into the wrong
    address space, which Metal rejects."""
    bad = FALLBACK + """
float first(thread float* p) { return p[0]; }
kernel void mixed(device float* o [[buffer(0)]]) { o[1] = first(o); }
"""
    with pytest.raises(SyntaxError, match="no matching function for call to 'first'"):
        compile_shader(H + bad, backend="cpu")
