// metal_stdlib math for the emulator: float, half and bfloat scalars and vectors.
//
// half and bfloat functions evaluate in float and round once to the type, which
// is at least as accurate as the GPU; fast:: and precise:: are the same
// correctly rounded functions (tests must hold for either on the GPU).
#pragma once

// No libc header: the C library's names (expm1f, isunordered as a macro, ...)
// would clash with kernels and headers that define their own. Clang's builtins
// lower to the C library's correctly rounded functions without declaring them.

#define M_E_F 2.71828182845904523536028747135266250f
#define M_LOG2E_F 1.44269504088896340735992468100189214f
#define M_LOG10E_F 0.434294481903251827651128918916605082f
#define M_LN2_F 0.693147180559945309417232121458176568f
#define M_LN10_F 2.30258509299404568401799145468436421f
#define M_PI_F 3.14159265358979323846264338327950288f
#define M_PI_2_F 1.57079632679489661923132169163975144f
#define M_PI_4_F 0.785398163397448309615660845819875721f
#define M_1_PI_F 0.318309886183790671537767526745028724f
#define M_2_PI_F 0.636619772367581343075535053490057448f
#define M_2_SQRTPI_F 1.12837916709551257389615890312154517f
#define M_SQRT2_F 1.41421356237309504880168872420969808f
#define M_SQRT1_2_F 0.707106781186547524400844362104849039f
#define M_E_H ((half)M_E_F)
#define M_LOG2E_H ((half)M_LOG2E_F)
#define M_LOG10E_H ((half)M_LOG10E_F)
#define M_LN2_H ((half)M_LN2_F)
#define M_LN10_H ((half)M_LN10_F)
#define M_PI_H ((half)M_PI_F)
#define M_PI_2_H ((half)M_PI_2_F)
#define M_PI_4_H ((half)M_PI_4_F)
#define M_1_PI_H ((half)M_1_PI_F)
#define M_2_PI_H ((half)M_2_PI_F)
#define M_2_SQRTPI_H ((half)M_2_SQRTPI_F)
#define M_SQRT2_H ((half)M_SQRT2_F)
#define M_SQRT1_2_H ((half)M_SQRT1_2_F)
#define MAXFLOAT 0x1.fffffep+127f
#define FLT_MAX 0x1.fffffep+127f
#define FLT_MIN 0x1p-126f
#define FLT_EPSILON 0x1p-23f
#define FLT_MANT_DIG 24
#define FLT_MAX_EXP 128
#define FLT_MIN_EXP (-125)
#define HALF_MAX ((half)65504.0f)
#define HALF_MIN ((half)0x1p-14f)
#define HALF_EPSILON ((half)0x1p-10f)
#define MAXHALF HALF_MAX
#define INFINITY __builtin_inff()
#define NAN __builtin_nanf("")
#define HUGE_VALF __builtin_huge_valf()
#define INT_MAX 2147483647
#define INT_MIN (-2147483647 - 1)
#define UINT_MAX 4294967295u
#define SHRT_MAX 32767
#define SHRT_MIN (-32768)
#define USHRT_MAX 65535
#define CHAR_BIT 8
#define CHAR_MAX 127
#define CHAR_MIN (-128)
#define UCHAR_MAX 255
#define LONG_MAX 9223372036854775807L
#define LONG_MIN (-9223372036854775807L - 1)
#define ULONG_MAX 18446744073709551615ul
#define METAL_FUNC inline __attribute__((always_inline))

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

inline float rsqrt_(float x) { return 1.0f / __builtin_sqrtf(x); }
inline float sign_(float x) { return x > 0.0f ? 1.0f : x < 0.0f ? -1.0f : x == x ? x : 0.0f; }
inline float clamp_(float x, float lo, float hi) { return __builtin_fminf(__builtin_fmaxf(x, lo), hi); }
// sin(pi x) and cos(pi x) reduced in x first, so integers and half-integers give exact 0 and +-1.
inline float sinpi_(float x) {
  if (__builtin_isinf(x)) return __builtin_nanf("");
  const float r = __builtin_remainderf(x, 2.0f);  // in [-1, 1]
  if (r == 0.0f) return __builtin_copysignf(0.0f, x);
  if (__builtin_fabsf(r) == 1.0f) return 0.0f * r;
  return (float)__builtin_sin((double)r * 3.14159265358979323846);
}
inline float cospi_(float x) {
  if (__builtin_isinf(x)) return __builtin_nanf("");
  const float r = __builtin_fabsf(__builtin_remainderf(x, 2.0f));
  if (r == 0.5f) return 0.0f;
  return (float)__builtin_cos((double)r * 3.14159265358979323846);
}

}  // namespace math_detail

// Each function is a template over Metal's float scalars and vectors, plus a
// plain float overload, so that an int argument converts as in Metal (`exp(2)`).
#define MPSK_UNARY(name, expr)                                                      \
  template <class T>                                                                \
    requires math_detail::is_float<T>                                               \
  inline T name(T x) {                                                              \
    return math_detail::map(x, [](float v) { return expr; });                       \
  }                                                                                 \
  inline float name(float v) { return expr; }

#define MPSK_FLOAT_FUNCS                                \
  MPSK_UNARY(exp, __builtin_expf(v))                              \
  MPSK_UNARY(exp2, __builtin_exp2f(v))                            \
  MPSK_UNARY(exp10, __builtin_powf(10.0f, v))                     \
  MPSK_UNARY(log, __builtin_logf(v))                              \
  MPSK_UNARY(log2, __builtin_log2f(v))                            \
  MPSK_UNARY(log10, __builtin_log10f(v))                          \
  MPSK_UNARY(sqrt, __builtin_sqrtf(v))                            \
  MPSK_UNARY(rsqrt, math_detail::rsqrt_(v))             \
  MPSK_UNARY(sin, __builtin_sinf(v))                              \
  MPSK_UNARY(cos, __builtin_cosf(v))                              \
  MPSK_UNARY(tan, __builtin_tanf(v))                              \
  MPSK_UNARY(asin, __builtin_asinf(v))                            \
  MPSK_UNARY(acos, __builtin_acosf(v))                            \
  MPSK_UNARY(atan, __builtin_atanf(v))                            \
  MPSK_UNARY(sinh, __builtin_sinhf(v))                            \
  MPSK_UNARY(cosh, __builtin_coshf(v))                            \
  MPSK_UNARY(tanh, __builtin_tanhf(v))                            \
  MPSK_UNARY(floor, __builtin_floorf(v))                          \
  MPSK_UNARY(ceil, __builtin_ceilf(v))                            \
  MPSK_UNARY(round, __builtin_roundf(v))                          \
  MPSK_UNARY(rint, __builtin_rintf(v))                            \
  MPSK_UNARY(trunc, __builtin_truncf(v))                          \
  MPSK_UNARY(fabs, __builtin_fabsf(v))                            \
  MPSK_UNARY(fract, __builtin_fminf(v - __builtin_floorf(v), 0x1.fffffep-1f)) \
  MPSK_UNARY(sign, math_detail::sign_(v))               \
  MPSK_UNARY(saturate, math_detail::clamp_(v, 0.0f, 1.0f)) \
  MPSK_UNARY(asinh, __builtin_asinhf(v))                \
  MPSK_UNARY(acosh, __builtin_acoshf(v))                \
  MPSK_UNARY(atanh, __builtin_atanhf(v))                \
  MPSK_UNARY(sinpi, math_detail::sinpi_(v))             \
  MPSK_UNARY(cospi, math_detail::cospi_(v))             \
  MPSK_UNARY(tanpi, math_detail::sinpi_(v) / math_detail::cospi_(v))

#define MPSK_BINARY(name, expr)                                                     \
  template <class T>                                                                \
    requires math_detail::is_float<T>                                               \
  inline T name(T x, T y) {                                                         \
    return math_detail::map2(x, y, [](float a, float b) { return expr; });          \
  }                                                                                 \
  inline float name(float a, float b) { return expr; }

#define MPSK_FLOAT_FUNCS2                   \
  MPSK_BINARY(pow, __builtin_powf(a, b))              \
  MPSK_BINARY(powr, __builtin_powf(a, b))             \
  MPSK_BINARY(fmax, __builtin_fmaxf(a, b))            \
  MPSK_BINARY(fmin, __builtin_fminf(a, b))            \
  MPSK_BINARY(fmod, __builtin_fmodf(a, b))            \
  MPSK_BINARY(atan2, __builtin_atan2f(a, b))          \
  MPSK_BINARY(copysign, __builtin_copysignf(a, b))    \
  MPSK_BINARY(divide, a / b)               \
  MPSK_BINARY(fdim, __builtin_fdimf(a, b))  \
  MPSK_BINARY(nextafter, __builtin_nextafterf(a, b))

MPSK_FLOAT_FUNCS
MPSK_FLOAT_FUNCS2

template <class T>
  requires math_detail::is_float<T>
inline T fma(T a, T b, T c) {
  return math_detail::map3(a, b, c, [](float x, float y, float z) { return __builtin_fmaf(x, y, z); });
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
  return static_cast<typename vinfo<T>::elem>(__builtin_sqrtf(static_cast<float>(dot(a, a))));
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


template <class T, class U>
  requires(math_detail::is_float_elem<T> && math_detail::is_float_elem<U>)
inline bool isunordered(T x, U y) {
  return x != x || y != y;
}
template <class T, class U>
  requires(math_detail::is_float_elem<T> && math_detail::is_float_elem<U>)
inline bool isordered(T x, U y) {
  return x == x && y == y;
}
template <class T>
  requires math_detail::is_float_elem<T>
inline bool isnormal(T x) {
  return __builtin_isnormal(static_cast<float>(x));
}

// ldexp(x, k), frexp(x, exp&), modf(x, int&) and sincos(x, cos&), lane by lane.
template <class T, class K>
  requires math_detail::is_float<T>
inline T ldexp(T x, K k) {
  if constexpr (is_vector_v<T>) {
    T r;
    for (int i = 0; i < vinfo<T>::lanes; ++i) r[i] = ldexp(x[i], k[i]);
    return r;
  } else {
    return static_cast<T>(__builtin_ldexpf(static_cast<float>(x), static_cast<int>(k)));
  }
}
inline float ldexp(float x, int k) { return __builtin_ldexpf(x, k); }

template <class T, class K>
  requires math_detail::is_float<T>
inline T frexp(T x, thread K& e) {
  if constexpr (is_vector_v<T>) {
    T r;
    for (int i = 0; i < vinfo<T>::lanes; ++i) {
      int ei;
      r[i] = static_cast<typename vinfo<T>::elem>(__builtin_frexpf(static_cast<float>(x[i]), &ei));
      e[i] = ei;
    }
    return r;
  } else {
    int ei;
    const T r = static_cast<T>(__builtin_frexpf(static_cast<float>(x), &ei));
    e = ei;
    return r;
  }
}

template <class T>
  requires math_detail::is_float<T>
inline T modf(T x, thread T& whole) {
  whole = trunc(x);
  return math_detail::map2(x, whole, [](float a, float w) { return __builtin_isinf(a) ? __builtin_copysignf(0.0f, a) : a - w; });
}

template <class T>
  requires math_detail::is_float<T>
inline T sincos(T x, thread T& c) {
  c = cos(x);
  return sin(x);
}

template <class T>
  requires math_detail::is_float_elem<T>
inline int ilogb(T x) {
  return __builtin_ilogbf(static_cast<float>(x));
}

template <class T>
  requires math_detail::is_float<T>
inline T fmax3(T a, T b, T c) { return fmax(fmax(a, b), c); }
template <class T>
  requires math_detail::is_float<T>
inline T fmin3(T a, T b, T c) { return fmin(fmin(a, b), c); }
template <class T>
inline T max3(T a, T b, T c) { return max(max(a, b), c); }
template <class T>
inline T min3(T a, T b, T c) { return min(min(a, b), c); }
template <class T>
inline T median3(T a, T b, T c) { return max(min(a, b), min(max(a, b), c)); }
template <class T>
  requires math_detail::is_float<T>
inline T fmedian3(T a, T b, T c) { return fmax(fmin(a, b), fmin(fmax(a, b), c)); }

// Integer functions, lane by lane; counts are of the element's own width.
namespace math_detail {
template <class E>
inline E clz1(E x) {
  using U = __make_unsigned(E);
  constexpr int bits = sizeof(E) * 8;
  const U u = static_cast<U>(x);
  if (u == 0) return static_cast<E>(bits);
  if constexpr (sizeof(E) == 8) return static_cast<E>(__builtin_clzl(u));
  else return static_cast<E>(__builtin_clz(static_cast<unsigned>(u)) - (32 - bits));
}
template <class E>
inline E ctz1(E x) {
  using U = __make_unsigned(E);
  constexpr int bits = sizeof(E) * 8;
  const U u = static_cast<U>(x);
  if (u == 0) return static_cast<E>(bits);
  if constexpr (sizeof(E) == 8) return static_cast<E>(__builtin_ctzl(u));
  else return static_cast<E>(__builtin_ctz(static_cast<unsigned>(u)));
}
template <class E>
inline E popcount1(E x) {
  using U = __make_unsigned(E);
  if constexpr (sizeof(E) == 8) return static_cast<E>(__builtin_popcountl(static_cast<U>(x)));
  else return static_cast<E>(__builtin_popcount(static_cast<unsigned>(static_cast<U>(x))));
}
template <class E>
inline E reverse_bits1(E x) {
  using U = __make_unsigned(E);
  U u = static_cast<U>(x), r = 0;
  for (unsigned i = 0; i < sizeof(E) * 8; ++i, u >>= 1) r = static_cast<U>((r << 1) | (u & 1));
  return static_cast<E>(r);
}
template <class E>
inline E mulhi1(E a, E b) {
  if constexpr (sizeof(E) == 8) {
    using W = conditional_t<__is_signed(E), __int128, unsigned __int128>;
    return static_cast<E>((static_cast<W>(a) * static_cast<W>(b)) >> 64);
  } else {
    using W = long;
    return static_cast<E>((static_cast<W>(a) * static_cast<W>(b)) >> (sizeof(E) * 8));
  }
}
}  // namespace math_detail

#define MPSK_INT_UNARY(name)                                                            \
  template <class T>                                                                    \
    requires math_detail::is_int<T>                                                     \
  inline T name(T x) {                                                                  \
    return math_detail::imap2(x, x, [](auto a, auto) { return math_detail::name##1(a); }); \
  }
MPSK_INT_UNARY(clz)
MPSK_INT_UNARY(ctz)
MPSK_INT_UNARY(popcount)
MPSK_INT_UNARY(reverse_bits)
#undef MPSK_INT_UNARY

template <class T>
  requires math_detail::is_int<T>
inline T mulhi(T x, T y) {
  return math_detail::imap2(x, y, [](auto a, auto b) { return math_detail::mulhi1(a, b); });
}
template <class T>
  requires math_detail::is_int<T>
inline T absdiff(T x, T y) {
  return math_detail::imap2(x, y, [](auto a, auto b) { return a > b ? a - b : b - a; });
}
template <class T>
  requires math_detail::is_int<T>
inline T hadd(T x, T y) {
  return math_detail::imap2(x, y, [](auto a, auto b) { return (a >> 1) + (b >> 1) + (a & b & 1); });
}
template <class T>
  requires math_detail::is_int<T>
inline T rotate(T x, T k) {
  return math_detail::imap2(x, k, [](auto a, auto n) {
    using E = decltype(a);
    using U = __make_unsigned(E);
    constexpr unsigned bits = sizeof(E) * 8;
    const unsigned s = static_cast<unsigned>(static_cast<U>(n)) % bits;
    const U u = static_cast<U>(a);
    return static_cast<E>(s == 0 ? u : static_cast<U>((u << s) | (u >> (bits - s))));
  });
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
