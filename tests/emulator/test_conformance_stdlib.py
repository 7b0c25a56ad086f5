"""Conformance: the Metal standard library surface real kernels use, one small kernel each.

Kernels are written from the Metal Shading Language specification (type traits 6.1, math
6.5, relational 6.3, integer 6.4, SIMD-group and quad-group functions 6.9, atomics 6.15,
matrices 2.3, packed vectors 2.2.3, uniform 2.15, metal::array 2.12); expected values come
from PyTorch or Python's math module.
"""

import math

import pytest
import torch

from mps_inductor_ext.shaders import KernelError, compile_shader

H = "#include <metal_stdlib>\nusing namespace metal;\n"


def _run_scalars(body: str, count: int) -> torch.Tensor:
    """Runs `body` in a one-thread kernel that writes `count` floats to `out`."""
    src = H + f"kernel void k(device float* out [[buffer(0)]], uint i [[thread_position_in_grid]]) {{\n{body}\n}}\n"
    out = torch.full((count,), float("nan"))
    compile_shader(src, backend="cpu").k(out, threads=1)
    return out


def test_type_traits():
    """<metal_type_traits>: Metal's scalars (half and bfloat included) and not its vectors."""
    body = """
  static_assert(is_same_v<float, float> && !is_same_v<float, half>, "");
  static_assert(is_floating_point_v<half> && is_floating_point_v<bfloat> && !is_floating_point_v<float4>, "");
  static_assert(is_integral_v<uint> && is_integral_v<long> && !is_integral_v<float>, "");
  static_assert(is_signed_v<int> && !is_signed_v<uint> && is_unsigned_v<ushort>, "");
  static_assert(is_scalar_v<half> && !is_scalar_v<half2>, "");
  static_assert(is_convertible_v<int, float> && bool_constant<true>::value && !false_type::value, "");
  static_assert(is_same_v<remove_addrspace_t<device float>, float>, "");
  static_assert(is_same_v<enable_if_t<true, int>, int>, "");
  static_assert(is_same_v<conditional_t<false, int, half>, half>, "");
  static_assert(is_same_v<decltype(declval<float2>() * 2.0f), float2>, "");
  static_assert(is_same_v<make_unsigned_t<int>, uint>, "");
  out[0] = vec_elements<float3>::value;
"""
    assert _run_scalars(body, 1).tolist() == [3.0]


def test_a_false_trait_fails_to_compile():
    """The traits are not vacuous: a false static_assert is a compile error."""
    with pytest.raises(SyntaxError, match="static assertion failed"):
        _run_scalars('  static_assert(is_floating_point_v<float4>, "vectors are not scalars");', 1)


def test_metal_array_value_semantics_and_bounds():
    body = """
  array<float, 3> a = {1.0f, 2.0f, 3.0f};
  array<float, 3> b = a;
  b[0] = 10.0f;
  out[0] = a[0];
  out[1] = b[0] + b[2];
  out[2] = a.size();
"""
    assert _run_scalars(body, 3).tolist() == [1.0, 13.0, 3.0]
    with pytest.raises(KernelError, match="metal::array index 3 out of range for an array of 3 elements"):
        _run_scalars("  array<float, 3> a = {1.0f, 2.0f, 3.0f};\n  int j = 3 + i;\n  out[0] = a[j];", 1)


def test_constants_and_limits():
    body = """
  out[0] = M_PI_F; out[1] = M_E_F; out[2] = M_SQRT2_F; out[3] = M_LN2_F; out[4] = M_1_PI_F;
  out[5] = FLT_MAX; out[6] = HALF_MAX; out[7] = MAXHALF; out[8] = FLT_EPSILON;
  out[9] = float(M_PI_H); out[10] = numeric_limits<half>::max(); out[11] = numeric_limits<bfloat>::lowest();
"""
    out = _run_scalars(body, 12)
    f32 = torch.finfo(torch.float32)
    expected = [math.pi, math.e, math.sqrt(2), math.log(2), 1 / math.pi, f32.max, 65504.0, 65504.0, f32.eps,
                float(torch.tensor(math.pi, dtype=torch.float16)), 65504.0, float(torch.finfo(torch.bfloat16).min)]
    torch.testing.assert_close(out, torch.tensor(expected, dtype=torch.float32), rtol=0, atol=0)


def test_math_functions():
    body = """
  float s, c;
  s = sincos(0.5f, c);
  int e;
  float fr = frexp(12.0f, e);
  float whole;
  float part = modf(2.75f, whole);
  out[0] = asinh(1.0f); out[1] = acosh(2.0f); out[2] = atanh(0.5f);
  out[3] = precise::asinh(1.0f); out[4] = fast::acosh(2.0f);
  out[5] = s; out[6] = c; out[7] = fr; out[8] = e; out[9] = ldexp(1.5f, 3);
  out[10] = sinpi(0.5f); out[11] = cospi(1.0f); out[12] = tanpi(0.25f); out[13] = sinpi(1.0f);
  out[14] = pow(2, 3.0f);                       // int argument: the float overload
  out[15] = isunordered(NAN, 1.0f) ? 1.0f : 0.0f; out[16] = isunordered(2.0f, 1.0f) ? 1.0f : 0.0f;
  out[17] = part; out[18] = whole; out[19] = fmedian3(3.0f, -1.0f, 2.0f); out[20] = median3(7, 1, 4);
"""
    out = _run_scalars(body, 21)
    expected = [math.asinh(1), math.acosh(2), math.atanh(0.5), math.asinh(1), math.acosh(2), math.sin(0.5),
                math.cos(0.5), 0.75, 4, 12.0, 1.0, -1.0, 1.0, 0.0, 8.0, 1.0, 0.0, 0.75, 2.0, 2.0, 4.0]
    torch.testing.assert_close(out, torch.tensor(expected, dtype=torch.float32))
    assert out[13].item() == 0.0, "sinpi of an integer is exactly zero"


@pytest.mark.parametrize("name", ["erf", "expm1", "log1p", "cbrt"])
def test_functions_metal_lacks_are_not_there(name):
    """MSL has no erf, expm1, log1p or cbrt (MLX and c10 define their own); a kernel that calls
    them would not compile on a Mac, so it does not compile here, and a kernel's own definition
    of them is not ambiguous."""
    with pytest.raises(SyntaxError, match=f"use of undeclared identifier '{name}'"):
        _run_scalars(f"  out[0] = {name}(0.5f);", 1)
    own = H + f"inline float {name}(float x) {{ return x + 1.0f; }}\n"
    own += f"kernel void k(device float* o [[buffer(0)]]) {{ o[0] = {name}(1.0f); }}\n"
    out = torch.zeros(1)
    compile_shader(own, backend="cpu").k(out, threads=1)
    assert out.item() == 2.0


def test_simd_prefix_products():
    src = H + """
kernel void k(device float* out [[buffer(0)]], uint lane [[thread_index_in_simdgroup]]) {
  float v = lane % 3 == 0 ? 2.0f : 1.0f;
  out[lane * 2 + 0] = simd_prefix_inclusive_product(v);
  out[lane * 2 + 1] = simd_prefix_exclusive_product(v);
}
"""
    out = torch.zeros(64)
    compile_shader(src, backend="cpu").k(out, threads=32)
    v = torch.where(torch.arange(32) % 3 == 0, 2.0, 1.0)
    inclusive = torch.cumprod(v, 0)
    assert torch.equal(out.view(32, 2)[:, 0], inclusive)
    assert torch.equal(out.view(32, 2)[:, 1], torch.cat([torch.ones(1), inclusive[:-1]]))


def test_integer_functions():
    body = """
  out[0] = ctz(8u); out[1] = clz(1u); out[2] = popcount(255u); out[3] = ctz(0u);
  out[4] = clz(ushort(1)); out[5] = popcount(-1); out[6] = reverse_bits(1u) == 0x80000000u;
  out[7] = mulhi(0x40000000u, 8u); out[8] = rotate(0x80000001u, 1u); out[9] = absdiff(3, -4);
"""
    assert _run_scalars(body, 10).tolist() == [3, 31, 8, 32, 15, 32, 1, 2, 3, 7]


def test_half_bfloat_conversions_in_every_form():
    body = """
  half h = half(1.5f);
  bfloat b = static_cast<bfloat>(h);
  half h2 = static_cast<half>(bfloat(2.5f));
  half4 hv = half4(1.0h, 2.0h, 3.0h, 4.0h);
  bfloat4 bv = static_cast<bfloat4>(hv);
  half4 hv2 = (half4)bv;
  out[0] = float(b); out[1] = float(h2); out[2] = float(bv.w); out[3] = float(hv2.z); out[4] = float((half)b);
"""
    assert _run_scalars(body, 5).tolist() == [1.5, 2.5, 4.0, 3.0, 1.5]


def test_matrices():
    src = H + """
kernel void k(device const float4* m [[buffer(0)]], device const float4* v [[buffer(1)]],
              device float4* out [[buffer(2)]], device float* scalars [[buffer(3)]]) {
  float4x4 a(m[0], m[1], m[2], m[3]);           // four columns
  out[0] = a * v[0];                             // matrix * column vector
  out[1] = v[0] * a;                             // row vector * matrix
  float4x4 t = transpose(a);
  out[2] = t[1];
  float4x4 id(1.0f);
  out[3] = (a * id)[2] - a[2];
  float2x2 small(float2(1.0f, 2.0f), float2(3.0f, 4.0f));
  scalars[0] = determinant(small);
  half2x4 hm;
  scalars[1] = sizeof(hm) + sizeof(float3x3);
  bfloat2x2 bm(small);                           // converting between element types
  scalars[2] = float(bm[1][0]) + float(bfloat4(v[0]).w);
}
"""
    m = torch.randn(4, 4, generator=torch.Generator().manual_seed(0))  # m[c] is column c
    v = torch.randn(1, 4, generator=torch.Generator().manual_seed(1))
    out = torch.zeros(4, 4)
    scalars = torch.zeros(3)
    compile_shader(src, backend="cpu").k(m, v, out, scalars, threads=1)
    a = m.T  # rows x columns
    torch.testing.assert_close(out[0], a @ v[0])
    torch.testing.assert_close(out[1], v[0] @ a)
    torch.testing.assert_close(out[2], a[1])
    assert torch.equal(out[3], torch.zeros(4))
    assert scalars[:2].tolist() == [1 * 4 - 3 * 2, 2 * 8 + 3 * 16]
    assert scalars[2].item() == 3.0 + v[0, 3].to(torch.bfloat16).item()


def test_packed_vectors_and_uniform():
    body = """
  packed_float3 p = packed_float3(1.0f, 2.0f, 3.0f);
  float3 q = p;
  p.y = 5.0f;
  uniform<float> u = 3.0f;
  float3 r = p + float3(1.0f);
  out[0] = sizeof(packed_float3); out[1] = alignof(packed_float3); out[2] = sizeof(packed_half4);
  out[3] = q.y; out[4] = p[1]; out[5] = r.z; out[6] = u * 2.0f;
"""
    assert _run_scalars(body, 7).tolist() == [12, 4, 8, 2.0, 5.0, 4.0, 6.0]


SIMD = H + """
kernel void simd(device float* out [[buffer(0)]], device ulong* votes [[buffer(1)]],
                 uint i [[thread_position_in_grid]], uint lane [[thread_index_in_simdgroup]],
                 uint q [[thread_index_in_quadgroup]], uint qg [[quadgroup_index_in_threadgroup]]) {
  float v = i;
  out[i * 12 + 0] = simd_shuffle_and_fill_down(v, -v, 3);
  out[i * 12 + 1] = simd_shuffle_and_fill_up(v, -v, 2);
  out[i * 12 + 2] = simd_shuffle_and_fill_down(v, -v, 1, 8);
  out[i * 12 + 3] = simd_product(lane < 4 ? 2.0f : 1.0f);
  out[i * 12 + 4] = quad_sum(v);
  out[i * 12 + 5] = simd_is_first() ? 1.0f : 0.0f;
  out[i * 12 + 6] = quad_shuffle(v, 3);
  out[i * 12 + 7] = quad_shuffle_xor(v, 1);
  out[i * 12 + 8] = quad_broadcast(v, 0);
  out[i * 12 + 9] = q;
  out[i * 12 + 10] = qg;
  out[i * 12 + 11] = simd_all(v >= 0) && !simd_any(v > 100) ? 1.0f : 0.0f;
  votes[i * 2 + 0] = static_cast<simd_vote::vote_t>(simd_ballot(lane % 3 == 0));
  votes[i * 2 + 1] = static_cast<simd_vote::vote_t>(simd_active_threads_mask());
}
"""


def test_simd_and_quad_functions():
    out = torch.zeros(32 * 12)
    votes = torch.zeros(32 * 2, dtype=torch.int64)
    compile_shader(SIMD, backend="cpu").simd(out, votes, threads=32)
    out = out.view(32, 12)
    i = torch.arange(32, dtype=torch.float32)
    # fill_down: lanes past the end take the filling of the lanes that far into the group (MSL 6.9.2).
    assert torch.equal(out[:, 0], torch.where(i + 3 < 32, i + 3, -(i + 3 - 32)))
    assert torch.equal(out[:, 1], torch.where(i >= 2, i - 2, -(i - 2 + 32)))
    seg = i - i % 8
    assert torch.equal(out[:, 2], torch.where(i % 8 < 7, i + 1, -seg))
    assert torch.equal(out[:, 3], torch.full((32,), 16.0))
    quad = i - i % 4
    assert torch.equal(out[:, 4], 4 * quad + 6)
    assert torch.equal(out[:, 5], (i == 0).float())
    assert torch.equal(out[:, 6], quad + 3)
    assert torch.equal(out[:, 7], quad + (i % 4).long().bitwise_xor(1).float())
    assert torch.equal(out[:, 8], quad)
    assert torch.equal(out[:, 9], i % 4)
    assert torch.equal(out[:, 10], (i // 4).floor())
    assert torch.equal(out[:, 11], torch.ones(32))
    ballot = sum(1 << k for k in range(0, 32, 3))
    assert votes.view(32, 2)[:, 0].tolist() == [ballot] * 32
    assert votes.view(32, 2)[:, 1].tolist() == [2**32 - 1] * 32


def test_simdgroup_matrix_with_defaulted_dimensions():
    src = H + """
kernel void k(device float* out [[buffer(0)]], uint lane [[thread_index_in_simdgroup]]) {
  simdgroup_float8x8 a = make_filled_simdgroup_matrix<float, 8>(2.0f);
  simdgroup_float8x8 b = make_filled_simdgroup_matrix<float, 8, 8>(0.5f);
  simdgroup_float8x8 c;
  simdgroup_multiply(c, a, b);
  simdgroup_store(c, out, 8);
}
"""
    out = torch.zeros(64)
    compile_shader(src, backend="cpu").k(out, threads=32)
    assert torch.equal(out, torch.full((64,), 8.0))


ATOMICS = H + """
kernel void atomics(device atomic_int* ai [[buffer(0)]], device atomic_float* af [[buffer(1)]],
                    device atomic_uint* au [[buffer(2)]], device int* out [[buffer(3)]],
                    uint i [[thread_position_in_grid]], uint l [[thread_index_in_threadgroup]]) {
  threadgroup atomic_int tg;
  if (l == 0) atomic_store_explicit(&tg, 0, memory_order_relaxed);
  threadgroup_barrier(mem_flags::mem_threadgroup);
  atomic_fetch_add_explicit(&tg, 1, memory_order_relaxed);
  atomic_fetch_add_explicit(&ai[0], 1, memory_order_relaxed);
  atomic_fetch_max_explicit(&ai[1], int(i), memory_order_relaxed);
  atomic_fetch_min_explicit(&ai[2], int(i), memory_order_relaxed);
  atomic_fetch_sub_explicit(&ai[3], 2, memory_order_relaxed);
  atomic_fetch_add_explicit(af, 0.5f, memory_order_relaxed);
  atomic_fetch_or_explicit(&au[0], 1u << (i % 32), memory_order_relaxed);
  atomic_fetch_and_explicit(&au[1], ~(1u << (i % 32)), memory_order_relaxed);
  atomic_fetch_xor_explicit(&au[2], 1u, memory_order_relaxed);
  uint expected = i == 5 ? 7u : 8u;
  atomic_compare_exchange_weak_explicit(&au[3], &expected, i + 100, memory_order_relaxed, memory_order_relaxed);
  if (i == 9) atomic_exchange_explicit(&au[4], 42u, memory_order_relaxed);
  threadgroup_barrier(mem_flags::mem_threadgroup);
  if (l == 0) out[i / 64] = atomic_load_explicit(&tg, memory_order_relaxed);
}
"""


def test_atomics_in_device_and_threadgroup_memory():
    ai = torch.tensor([0, -1, 1000, 0], dtype=torch.int32)
    af = torch.zeros(1)
    au = torch.tensor([0, -1, 0, 7, 0], dtype=torch.int32)
    out = torch.zeros(2, dtype=torch.int32)
    compile_shader(ATOMICS, backend="cpu").atomics(ai, af, au, out, threads=128, group_size=64)
    assert ai.tolist() == [128, 127, 0, -256]
    assert af.item() == 64.0
    assert au.tolist() == [-1, 0, 0, 105, 42]
    assert out.tolist() == [64, 64]


def test_atomic_float_adds_in_any_order_are_not_a_race():
    """Summing floats of very different magnitudes atomically rounds differently when the threads
    run in another order; the two-schedule check tolerates that rounding, and only there."""
    src = H + """
kernel void k(device atomic_float* acc [[buffer(0)]], constant float* x [[buffer(1)]],
              uint i [[thread_position_in_grid]]) {
  atomic_fetch_add_explicit(acc, x[i], memory_order_relaxed);
}
kernel void racy(device float* acc [[buffer(0)]], constant float* x [[buffer(1)]],
                 uint i [[thread_position_in_grid]]) {
  acc[0] = acc[0] + x[i];
}
"""
    lib = compile_shader(src, backend="cpu")
    x = torch.tensor([1e8, 1.0, -1e8, 3.0, 0.5, 7.25] * 20)
    acc = torch.zeros(1)
    lib.k(acc, x, threads=len(x), group_size=len(x))
    assert abs(acc.item() - x.double().sum().item()) < 1e-5 * 1e8
    with pytest.raises(KernelError, match="ends differently when the threads and threadgroups run in another order"):
        lib.racy(torch.zeros(1), x, threads=len(x), group_size=len(x))
