// metal_stdlib math for the emulator: float, half and bfloat scalars and vectors.
//
// half and bfloat functions evaluate in float and round once to the type, which
// is at least as accurate as the GPU; fast:: and precise:: are the same
// correctly rounded functions (tests must hold for either on the GPU).
#pragma once

#include <math.h>

// glibc defines these as macros; Metal has them as functions.
#undef isnan
#undef isinf
#undef isfinite
#undef signbit

namespace metal {

namespace math_detail {

template <class E>
inline constexpr bool is_float_elem = __is_same(E, float) || __is_same(E, half) || __is_same(E, bfloat);

template <class T>
inline constexpr bool is_float = is_float_elem<typename vinfo<T>::elem>;

template <class T>
inline constexpr bool is_int = __is_integral(typename vinfo<T>::elem);

template <class T, class F>
inline T map(const T& x, F f) {
  using E = typename vinfo<T>::elem;
  if constexpr (is_vector_v<T>) {
    T r;
    for (int i = 0; i < vinfo<T>::lanes; ++i) r[i] = static_cast<E>(f(static_cast<float>(x[i])));
    return r;
  } else {
    return static_cast<E>(f(static_cast<float>(x)));
  }
}

template <class T, class F>
inline T map2(const T& x, const T& y, F f) {
  using E = typename vinfo<T>::elem;
  if constexpr (is_vector_v<T>) {
    T r;
    for (int i = 0; i < vinfo<T>::lanes; ++i)
      r[i] = static_cast<E>(f(static_cast<float>(x[i]), static_cast<float>(y[i])));
    return r;
  } else {
    return static_cast<E>(f(static_cast<float>(x), static_cast<float>(y)));
  }
}

template <class T, class F>
inline T map3(const T& x, const T& y, const T& z, F f) {
  using E = typename vinfo<T>::elem;
  if constexpr (is_vector_v<T>) {
    T r;
    for (int i = 0; i < vinfo<T>::lanes; ++i)
      r[i] = static_cast<E>(
          f(static_cast<float>(x[i]), static_cast<float>(y[i]), static_cast<float>(z[i])));
    return r;
  } else {
    return static_cast<E>(f(static_cast<float>(x), static_cast<float>(y), static_cast<float>(z)));
  }
}

template <class T, class F>
inline T imap2(const T& x, const T& y, F f) {
  if constexpr (is_vector_v<T>) {
    T r;
    for (int i = 0; i < vinfo<T>::lanes; ++i) r[i] = f(x[i], y[i]);
    return r;
  } else {
    return f(x, y);
  }
}

inline float rsqrt_(float x) { return 1.0f / sqrtf(x); }
inline float sign_(float x) { return x > 0.0f ? 1.0f : x < 0.0f ? -1.0f : x == x ? x : 0.0f; }
inline float clamp_(float x, float lo, float hi) { return fminf(fmaxf(x, lo), hi); }

}  // namespace math_detail

#define MPSK_UNARY(name, expr)                                                      \
  template <class T>                                                                \
    requires math_detail::is_float<T>                                               \
  inline T name(T x) {                                                              \
    return math_detail::map(x, [](float v) { return expr; });                       \
  }

#define MPSK_FLOAT_FUNCS                                \
  MPSK_UNARY(exp, expf(v))                              \
  MPSK_UNARY(exp2, exp2f(v))                            \
  MPSK_UNARY(exp10, powf(10.0f, v))                     \
  MPSK_UNARY(log, logf(v))                              \
  MPSK_UNARY(log2, log2f(v))                            \
  MPSK_UNARY(log10, log10f(v))                          \
  MPSK_UNARY(sqrt, sqrtf(v))                            \
  MPSK_UNARY(rsqrt, math_detail::rsqrt_(v))             \
  MPSK_UNARY(sin, sinf(v))                              \
  MPSK_UNARY(cos, cosf(v))                              \
  MPSK_UNARY(tan, tanf(v))                              \
  MPSK_UNARY(asin, asinf(v))                            \
  MPSK_UNARY(acos, acosf(v))                            \
  MPSK_UNARY(atan, atanf(v))                            \
  MPSK_UNARY(sinh, sinhf(v))                            \
  MPSK_UNARY(cosh, coshf(v))                            \
  MPSK_UNARY(tanh, tanhf(v))                            \
  MPSK_UNARY(erf, erff(v))                              \
  MPSK_UNARY(floor, floorf(v))                          \
  MPSK_UNARY(ceil, ceilf(v))                            \
  MPSK_UNARY(round, roundf(v))                          \
  MPSK_UNARY(rint, rintf(v))                            \
  MPSK_UNARY(trunc, truncf(v))                          \
  MPSK_UNARY(fabs, fabsf(v))                            \
  MPSK_UNARY(fract, fminf(v - floorf(v), 0x1.fffffep-1f)) \
  MPSK_UNARY(sign, math_detail::sign_(v))               \
  MPSK_UNARY(saturate, math_detail::clamp_(v, 0.0f, 1.0f))

#define MPSK_BINARY(name, expr)                                                     \
  template <class T>                                                                \
    requires math_detail::is_float<T>                                               \
  inline T name(T x, T y) {                                                         \
    return math_detail::map2(x, y, [](float a, float b) { return expr; });          \
  }

#define MPSK_FLOAT_FUNCS2                   \
  MPSK_BINARY(pow, powf(a, b))              \
  MPSK_BINARY(powr, powf(a, b))             \
  MPSK_BINARY(fmax, fmaxf(a, b))            \
  MPSK_BINARY(fmin, fminf(a, b))            \
  MPSK_BINARY(fmod, fmodf(a, b))            \
  MPSK_BINARY(atan2, atan2f(a, b))          \
  MPSK_BINARY(copysign, copysignf(a, b))    \
  MPSK_BINARY(divide, a / b)

MPSK_FLOAT_FUNCS
MPSK_FLOAT_FUNCS2

template <class T>
  requires math_detail::is_float<T>
inline T fma(T a, T b, T c) {
  return math_detail::map3(a, b, c, [](float x, float y, float z) { return fmaf(x, y, z); });
}

template <class T>
  requires math_detail::is_float<T>
inline T mix(T x, T y, T a) {
  return math_detail::map3(x, y, a, [](float p, float q, float t) { return p + (q - p) * t; });
}

template <class T>
  requires math_detail::is_float<T>
inline T clamp(T x, T lo, T hi) {
  return math_detail::map3(x, lo, hi, math_detail::clamp_);
}

template <class T>
  requires math_detail::is_int<T>
inline T clamp(T x, T lo, T hi) {
  return math_detail::imap2(math_detail::imap2(x, lo, [](auto a, auto b) { return a > b ? a : b; }),
                            hi, [](auto a, auto b) { return a < b ? a : b; });
}

// max and min follow fmax/fmin for floats (a NaN operand yields the other one),
// and compare for integers.
template <class T>
  requires math_detail::is_float<T>
inline T max(T x, T y) {
  return fmax(x, y);
}
template <class T>
  requires math_detail::is_float<T>
inline T min(T x, T y) {
  return fmin(x, y);
}
template <class T>
  requires math_detail::is_int<T>
inline T max(T x, T y) {
  return math_detail::imap2(x, y, [](auto a, auto b) { return a > b ? a : b; });
}
template <class T>
  requires math_detail::is_int<T>
inline T min(T x, T y) {
  return math_detail::imap2(x, y, [](auto a, auto b) { return a < b ? a : b; });
}

template <class T>
  requires math_detail::is_float<T>
inline T abs(T x) {
  return fabs(x);
}
template <class T>
  requires math_detail::is_int<T>
inline T abs(T x) {
  return math_detail::imap2(x, x, [](auto a, auto) { return a < 0 ? -a : a; });
}

template <class T>
inline bool isnan(T x)
  requires math_detail::is_float_elem<T>
{
  return x != x;
}
template <class T>
inline bool isinf(T x)
  requires math_detail::is_float_elem<T>
{
  return __builtin_isinf(static_cast<float>(x));
}
template <class T>
inline bool isfinite(T x)
  requires math_detail::is_float_elem<T>
{
  return __builtin_isfinite(static_cast<float>(x));
}
template <class T>
inline bool signbit(T x)
  requires math_detail::is_float_elem<T>
{
  return __builtin_signbit(static_cast<float>(x));
}

// Metal's relational functions on vectors answer lane by lane, as a bool vector.
#define MPSK_VECTOR_TEST(name)                                        \
  template <class T>                                                  \
    requires(is_vector_v<T> && math_detail::is_float<T>)              \
  inline boolvec<vinfo<T>::lanes> name(T x) {                         \
    boolvec<vinfo<T>::lanes> r{};                                     \
    for (int i = 0; i < vinfo<T>::lanes; ++i) r[i] = name(x[i]);      \
    return r;                                                         \
  }
MPSK_VECTOR_TEST(isnan)
MPSK_VECTOR_TEST(isinf)
MPSK_VECTOR_TEST(isfinite)
MPSK_VECTOR_TEST(signbit)
#undef MPSK_VECTOR_TEST

template <class T>
  requires math_detail::is_float<T>
inline typename vinfo<T>::elem dot(T a, T b) {
  float acc = 0.0f;
  for (int i = 0; i < vinfo<T>::lanes; ++i) acc += static_cast<float>(a[i]) * static_cast<float>(b[i]);
  return static_cast<typename vinfo<T>::elem>(acc);
}

template <class T>
  requires math_detail::is_float<T>
inline typename vinfo<T>::elem length(T a) {
  return static_cast<typename vinfo<T>::elem>(sqrtf(static_cast<float>(dot(a, a))));
}

// select(a, b, c): c ? b : a, lane by lane.
template <class T, class C>
inline T select(T a, T b, C c) {
  if constexpr (is_vector_v<T>) {
    T r;
    for (int i = 0; i < vinfo<T>::lanes; ++i) r[i] = c[i] ? b[i] : a[i];
    return r;
  } else {
    return c ? b : a;
  }
}

template <class V>
inline bool all(V v) {
  for (int i = 0; i < vinfo<V>::lanes; ++i)
    if (!v[i]) return false;
  return true;
}
template <class V>
inline bool any(V v) {
  for (int i = 0; i < vinfo<V>::lanes; ++i)
    if (v[i]) return true;
  return false;
}

namespace fast {
MPSK_FLOAT_FUNCS
MPSK_FLOAT_FUNCS2
using metal::clamp;
using metal::fma;
using metal::max;
using metal::min;
using metal::mix;
}  // namespace fast

namespace precise {
MPSK_FLOAT_FUNCS
MPSK_FLOAT_FUNCS2
using metal::clamp;
using metal::fma;
using metal::max;
using metal::min;
using metal::mix;
}  // namespace precise

#undef MPSK_FLOAT_FUNCS
#undef MPSK_FLOAT_FUNCS2
#undef MPSK_UNARY
#undef MPSK_BINARY

}  // namespace metal
