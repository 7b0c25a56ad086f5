// Metal scalar and vector types for the CPU emulator.
//
// Vectors are clang ext_vector_types, the same representation Metal's own
// compiler uses, so swizzles (v.xy, v.wzyx), swizzle assignment and
// component-wise arithmetic behave as on the GPU and implicit conversions
// between vector types are rejected exactly as Metal rejects them. Address
// spaces are clang address_space attributes: a device pointer handed to a
// function that wants a threadgroup or thread pointer does not compile.
#pragma once

// MPSK_GENERIC_SPACES: the fallback build for sources whose class objects in device or
// threadgroup memory clang cannot type with an address space (see toolchain.py), made only
// after a first build with address spaces found no mix-up of them; memory is then generic.
#ifdef MPSK_GENERIC_SPACES
#define device
#define constant const
#define threadgroup
#else
#define device __attribute__((address_space(1)))
#define constant __attribute__((address_space(2))) const
#define threadgroup __attribute__((address_space(3)))
#endif
#define thread

typedef unsigned char uchar;
typedef unsigned short ushort;
typedef unsigned int uint;
typedef unsigned long ulong;
typedef _Float16 half;
typedef __bf16 bfloat;
typedef __SIZE_TYPE__ size_t;
typedef __PTRDIFF_TYPE__ ptrdiff_t;
typedef char int8_t;  // signed char is reserved for bool vector lanes
typedef short int16_t;
typedef int int32_t;
typedef long int64_t;
typedef uchar uint8_t;
typedef ushort uint16_t;
typedef uint uint32_t;
typedef ulong uint64_t;

#define MPSK_VECTORS(T)                                  \
  typedef T T##2 __attribute__((ext_vector_type(2)));   \
  typedef T T##3 __attribute__((ext_vector_type(3)));   \
  typedef T T##4 __attribute__((ext_vector_type(4)));
MPSK_VECTORS(float)
MPSK_VECTORS(half)
MPSK_VECTORS(bfloat)
MPSK_VECTORS(char)
MPSK_VECTORS(uchar)
MPSK_VECTORS(short)
MPSK_VECTORS(ushort)
MPSK_VECTORS(int)
MPSK_VECTORS(uint)
MPSK_VECTORS(long)
MPSK_VECTORS(ulong)
#undef MPSK_VECTORS
// bool2/3/4 are vectors of signed char lanes holding 0 or 1, not clang's bool
// vectors: those are bit-packed (sizeof(bool4) == 1 where Metal has 4), reject
// swizzles (b.x), and clang 22 miscompiles writes to their lanes at -O2.
// signed char appears nowhere else (char4 is char, int8_t is char), so a
// signed char lane always means a bool lane.
typedef signed char bool2 __attribute__((ext_vector_type(2)));
typedef signed char bool3 __attribute__((ext_vector_type(3)));
typedef signed char bool4 __attribute__((ext_vector_type(4)));

// float -> bfloat rounding (to nearest even, NaN stays NaN). Clang calls this
// compiler-rt routine for every bfloat store and operation, and the compiler-rt
// zig links does not provide it.
extern "C" __attribute__((weak, visibility("hidden"))) __bf16 __truncsfbf2(float f) {
  unsigned u = __builtin_bit_cast(unsigned, f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return __builtin_bit_cast(__bf16, (unsigned short)((u >> 16) | 0x40u));
  u += 0x7fffu + ((u >> 16) & 1u);
  return __builtin_bit_cast(__bf16, (unsigned short)(u >> 16));
}

namespace metal {

template <class T, int N>
using vec = T __attribute__((ext_vector_type(N)));

// Element type and lane count of a scalar or vector type.
template <class T>
struct vinfo {
  using elem = T;
  static constexpr int lanes = 1;
};
template <class T, int N>
struct vinfo<T __attribute__((ext_vector_type(N)))> {
  using elem = T;
  static constexpr int lanes = N;
};

template <class T>
inline constexpr bool is_vector_v = vinfo<T>::lanes > 1;

// Strips a clang address space, so type traits can see the element type.
template <class T>
struct strip_as {
  using type = T;
};
template <class T, int AS>
struct strip_as<__attribute__((address_space(AS))) T> {
  using type = T;
};

template <class T>
struct remove_cvas {
  using type = __remove_cv(typename strip_as<__remove_cv(T)>::type);
};

template <int N>
using boolvec = signed char __attribute__((ext_vector_type(N)));

namespace detail {

// One lane of a vector with element type E; bool lanes hold 0 or 1 as Metal's bool does.
template <class E, class X>
constexpr E lane(const X& x) {
  using B = __remove_cv(typename strip_as<__remove_cvref(X)>::type);
  if constexpr (__is_same(E, signed char)) {
    return static_cast<bool>(x);
  } else if constexpr ((__is_same(E, half) && __is_same(B, bfloat)) || (__is_same(E, bfloat) && __is_same(B, half))) {
    return static_cast<E>(static_cast<float>(x));  // Metal converts; clang has no direct half <-> bfloat cast
  } else {
    return static_cast<E>(x);
  }
}

// Lanes of an argument, which may be an lvalue in device, constant or threadgroup memory.
template <class A>
using vinfo_of = vinfo<typename remove_cvas<__remove_reference_t(A)>::type>;

template <class E, class A>
constexpr void vfill(E* out, int& at, const A& a) {
  using I = vinfo_of<A>;
  if constexpr (I::lanes == 1) {
    out[at++] = lane<E>(a);
  } else {
    for (int i = 0; i < I::lanes; ++i) out[at++] = lane<E>(a[i]);
  }
}

template <class A>
constexpr A only(A a) {
  return a;
}

template <class A>
constexpr int lanes_of() {
  return vinfo_of<A>::lanes;
}

}  // namespace detail

// Metal vector constructors: float4(x) splats, float4(h4) converts element-wise,
// float4(v.xy, v.zw) concatenates. The pre-pass rewrites `float4(...)` to this.
// Arguments are taken by value: a swizzle of a device or constant vector
// (`p[i].xy`) has an address-space-qualified element type that no reference
// parameter accepts.
// The pre-pass also routes `V(...)` here when V is a template parameter or an
// alias it cannot resolve; for anything but a scalar or vector that is V(...) itself.
template <class V, class... A>
constexpr V vmake(A... a) {
  using E = typename vinfo<V>::elem;
  constexpr int N = vinfo<V>::lanes;
  constexpr int total = (0 + ... + detail::lanes_of<A>());
  if constexpr (!is_vector_v<V> && !__is_arithmetic(V)) {
    return V(a...);
  } else if constexpr (sizeof...(A) == 0) {
    return V(E(0));
  } else if constexpr (sizeof...(A) == 1 && total == 1) {
    return V(detail::lane<E>(detail::only(a...)));
  } else {
    static_assert(total == N,
                  "vector constructor: the arguments' components must add up to the vector's size");
    E tmp[N > 1 ? N : 1] = {};
    int at = 0;
    (detail::vfill(tmp, at, a), ...);
    if constexpr (N == 1) {
      return tmp[0];
    } else {
      V r{};  // `V r;` crashes clang 22 when the result feeds a swizzle assignment
      for (int i = 0; i < N; ++i) r[i] = tmp[i];
      return r;
    }
  }
}

// static_cast<float4>(h4) in Metal converts element-wise; the pre-pass rewrites it to this.
// Also C-style casts to a vector type or an unresolved type name: `(int4)f4` converts.
template <class V, class A>
constexpr V vcast(A a) {
  if constexpr (!is_vector_v<V> && !__is_arithmetic(V)) {
    return (V)a;
  } else if constexpr (is_vector_v<V> && detail::lanes_of<A>() > 1 &&
                !__is_same(typename vinfo<V>::elem, signed char)) {
    static_assert(vinfo<V>::lanes == detail::lanes_of<A>(), "static_cast between vectors of different sizes");
    using From = typename vinfo<typename remove_cvas<A>::type>::elem;
    using To = typename vinfo<V>::elem;
    if constexpr (__is_same(To, bfloat) || __is_same(From, bfloat)) {
      // Lane by lane through float: clang has no half <-> bfloat conversion, and its x86 backend
      // fails on some vector conversions to bfloat.
      V r{};
      for (int i = 0; i < vinfo<V>::lanes; ++i) r[i] = static_cast<To>(static_cast<float>(a[i]));
      return r;
    } else {
      return __builtin_convertvector(a, V);
    }
  } else {
    return vmake<V>(a);
  }
}

// `f({a, b, c})`: a braced list as an argument. Clang cannot turn one into a vector
// parameter, so the pre-pass passes braced(a, b, c) instead, which converts to whatever
// the parameter is: a vector lane by lane as Metal does, anything else by list-initialization.
template <class F>
struct braced_list {
  F apply;
  template <class T>
  constexpr operator T() const {
    return apply([](auto... x) -> T {
      if constexpr (is_vector_v<T>) {
        return vmake<T>(x...);
      } else {
        return T{x...};
      }
    });
  }
};

template <class... A>
constexpr auto braced(A... a) {
  auto apply = [=](auto f) { return f(a...); };
  return braced_list<decltype(apply)>{apply};
}

template <class To, class From>
constexpr To as_type(From x) {  // by value: see vmake
  static_assert(sizeof(To) == sizeof(From), "as_type: source and destination sizes differ");
  return __builtin_bit_cast(To, x);
}

template <class T>
struct numeric_limits;

#define MPSK_INT_LIMITS(T, MIN, MAX, SIGNED, DIGITS)                 \
  template <>                                                        \
  struct numeric_limits<T> {                                         \
    static constexpr bool is_specialized = true;                     \
    static constexpr bool is_signed = SIGNED;                        \
    static constexpr bool is_integer = true;                         \
    static constexpr int digits = DIGITS;                            \
    static constexpr T min() { return MIN; }                         \
    static constexpr T lowest() { return MIN; }                      \
    static constexpr T max() { return MAX; }                         \
  };
MPSK_INT_LIMITS(bool, false, true, false, 1)
MPSK_INT_LIMITS(char, -128, 127, true, 7)
MPSK_INT_LIMITS(uchar, 0, 255, false, 8)
MPSK_INT_LIMITS(short, -32768, 32767, true, 15)
MPSK_INT_LIMITS(ushort, 0, 65535, false, 16)
MPSK_INT_LIMITS(int, -2147483647 - 1, 2147483647, true, 31)
MPSK_INT_LIMITS(uint, 0u, 4294967295u, false, 32)
MPSK_INT_LIMITS(long, -9223372036854775807L - 1, 9223372036854775807L, true, 63)
MPSK_INT_LIMITS(ulong, 0ul, 18446744073709551615ul, false, 64)
#undef MPSK_INT_LIMITS

#define MPSK_FLOAT_LIMITS(T, BITS, INF, QNAN, MIN, MAX, LOWEST, EPS, DIGITS) \
  template <>                                                                \
  struct numeric_limits<T> {                                                 \
    static constexpr bool is_specialized = true;                             \
    static constexpr bool is_signed = true;                                  \
    static constexpr bool is_integer = false;                                \
    static constexpr bool has_infinity = true;                               \
    static constexpr bool has_quiet_NaN = true;                              \
    static constexpr int digits = DIGITS;                                    \
    static constexpr T infinity() { return __builtin_bit_cast(T, (BITS)INF); } \
    static constexpr T quiet_NaN() { return __builtin_bit_cast(T, (BITS)QNAN); } \
    static constexpr T min() { return __builtin_bit_cast(T, (BITS)MIN); }    \
    static constexpr T max() { return __builtin_bit_cast(T, (BITS)MAX); }    \
    static constexpr T lowest() { return __builtin_bit_cast(T, (BITS)LOWEST); } \
    static constexpr T epsilon() { return __builtin_bit_cast(T, (BITS)EPS); } \
  };
MPSK_FLOAT_LIMITS(float, uint, 0x7f800000u, 0x7fc00000u, 0x00800000u, 0x7f7fffffu, 0xff7fffffu,
                  0x34000000u, 24)
MPSK_FLOAT_LIMITS(half, ushort, 0x7c00, 0x7e00, 0x0400, 0x7bff, 0xfbff, 0x1400, 11)
MPSK_FLOAT_LIMITS(bfloat, ushort, 0x7f80, 0x7fc0, 0x0080, 0x7f7f, 0xff7f, 0x3c00, 8)
#undef MPSK_FLOAT_LIMITS

}  // namespace metal

using metal::as_type;
