// Apple's own builtins behind metal_stdlib, which some real kernels call directly (MLX's
// bf16 math and SIMD helpers): `__metal_exp(x, __METAL_MAYBE_FAST_MATH__)`, `__metal_simd_sum`,
// `_disjunction`. Each forwards to the public function; the trailing fast-math flag is
// ignored, as the emulator's fast:: functions are the precise ones.
#pragma once

#define __METAL_MAYBE_FAST_MATH__ false
#define __METAL_FAST_MATH__ true
#define __METAL_PRECISE_MATH__ false

#define MPSK_BUILTIN1(n)                                     \
  template <class T, class... Flags>                         \
  inline T __metal_##n(T x, Flags...) {                      \
    return metal::n(x);                                      \
  }
#define MPSK_BUILTIN2(n)                                     \
  template <class T, class... Flags>                         \
  inline T __metal_##n(T x, T y, Flags...) {                 \
    return metal::n(x, y);                                   \
  }
#define MPSK_BUILTIN3(n)                                     \
  template <class T, class... Flags>                         \
  inline T __metal_##n(T x, T y, T z, Flags...) {            \
    return metal::n(x, y, z);                                \
  }
MPSK_BUILTIN1(fabs) MPSK_BUILTIN1(acos) MPSK_BUILTIN1(acosh) MPSK_BUILTIN1(asin) MPSK_BUILTIN1(asinh)
MPSK_BUILTIN1(atan) MPSK_BUILTIN1(atanh) MPSK_BUILTIN1(ceil) MPSK_BUILTIN1(cos) MPSK_BUILTIN1(cosh)
MPSK_BUILTIN1(cospi) MPSK_BUILTIN1(exp) MPSK_BUILTIN1(exp10) MPSK_BUILTIN1(exp2) MPSK_BUILTIN1(floor)
MPSK_BUILTIN1(fract) MPSK_BUILTIN1(log) MPSK_BUILTIN1(log10) MPSK_BUILTIN1(log2) MPSK_BUILTIN1(rint)
MPSK_BUILTIN1(round) MPSK_BUILTIN1(rsqrt) MPSK_BUILTIN1(sin) MPSK_BUILTIN1(sinh) MPSK_BUILTIN1(sinpi)
MPSK_BUILTIN1(sqrt) MPSK_BUILTIN1(tan) MPSK_BUILTIN1(tanh) MPSK_BUILTIN1(tanpi) MPSK_BUILTIN1(trunc)
MPSK_BUILTIN1(saturate) MPSK_BUILTIN1(sign)
MPSK_BUILTIN2(atan2) MPSK_BUILTIN2(divide) MPSK_BUILTIN2(fmax) MPSK_BUILTIN2(fmin) MPSK_BUILTIN2(fmod)
MPSK_BUILTIN2(nextafter) MPSK_BUILTIN2(pow) MPSK_BUILTIN2(powr) MPSK_BUILTIN2(copysign) MPSK_BUILTIN2(fdim)
MPSK_BUILTIN3(fma) MPSK_BUILTIN3(fmax3) MPSK_BUILTIN3(fmin3) MPSK_BUILTIN3(fmedian3)
#undef MPSK_BUILTIN1
#undef MPSK_BUILTIN2
#undef MPSK_BUILTIN3

template <class T, class... Flags>
inline T __metal_frexp(T x, thread int* e, Flags...) {
  return metal::frexp(x, *e);
}
template <class T, class... Flags>
inline T __metal_ldexp(T x, int k, Flags...) {
  return metal::ldexp(x, k);
}
template <class T>
inline T __metal_get_simdgroup_size(T) {
  return T(mpsk_rt::kSimdWidth);
}
template <class T>
inline T __metal_get_thread_index_in_simdgroup(T) {
  return T(mpsk_rt::T->a[mpsk_rt::thread_index_in_simdgroup][0]);
}

#define MPSK_SIMD_BUILTIN1(n)                                \
  template <class T>                                         \
  inline T __metal_##n(T x, MPSK_SITE_PARAMS) {              \
    return metal::n(x, mpsk_file, mpsk_line, mpsk_col);      \
  }
#define MPSK_SIMD_BUILTIN2(n)                                \
  template <class T, class U>                                \
  inline T __metal_##n(T x, U lane, MPSK_SITE_PARAMS) {      \
    return metal::n(x, lane, mpsk_file, mpsk_line, mpsk_col); \
  }
MPSK_SIMD_BUILTIN1(simd_sum) MPSK_SIMD_BUILTIN1(simd_product) MPSK_SIMD_BUILTIN1(simd_max)
MPSK_SIMD_BUILTIN1(simd_min) MPSK_SIMD_BUILTIN1(simd_and) MPSK_SIMD_BUILTIN1(simd_or)
MPSK_SIMD_BUILTIN1(simd_prefix_inclusive_sum) MPSK_SIMD_BUILTIN1(simd_prefix_exclusive_sum)
MPSK_SIMD_BUILTIN1(simd_prefix_inclusive_product) MPSK_SIMD_BUILTIN1(simd_prefix_exclusive_product)
MPSK_SIMD_BUILTIN2(simd_broadcast) MPSK_SIMD_BUILTIN2(simd_shuffle) MPSK_SIMD_BUILTIN2(simd_shuffle_xor)
MPSK_SIMD_BUILTIN2(simd_shuffle_down) MPSK_SIMD_BUILTIN2(simd_shuffle_up)
MPSK_SIMD_BUILTIN2(simd_shuffle_rotate_down) MPSK_SIMD_BUILTIN2(simd_shuffle_rotate_up)
#undef MPSK_SIMD_BUILTIN1
#undef MPSK_SIMD_BUILTIN2

// The builtin's xor takes any 32-bit type (MLX reduces floats bitwise with it).
template <class T>
inline T __metal_simd_xor(T x, MPSK_SITE_PARAMS) {
  static_assert(sizeof(T) == 4, "__metal_simd_xor on a type that is not 32 bits");
  return as_type<T>(metal::simd_xor(as_type<uint>(x), mpsk_file, mpsk_line, mpsk_col));
}
template <class T, class U>
inline T __metal_simd_shuffle_and_fill_down(T x, T fill, U delta, U modulo, MPSK_SITE_PARAMS) {
  return metal::simd_shuffle_and_fill_down(x, fill, (ushort)delta, (ushort)modulo, mpsk_file, mpsk_line, mpsk_col);
}
template <class T, class U>
inline T __metal_simd_shuffle_and_fill_up(T x, T fill, U delta, U modulo, MPSK_SITE_PARAMS) {
  return metal::simd_shuffle_and_fill_up(x, fill, (ushort)delta, (ushort)modulo, mpsk_file, mpsk_line, mpsk_col);
}

namespace metal {
template <class... B>
struct _disjunction : bool_constant<(false || ... || B::value)> {};
template <class... B>
struct _conjunction : bool_constant<(true && ... && B::value)> {};
template <class B>
struct _negation : bool_constant<!B::value> {};
}  // namespace metal
