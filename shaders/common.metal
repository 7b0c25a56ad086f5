// What every kernel file shares; load_source() puts it ahead of each (the guard keeps
// one copy when the host concatenates several files). It defines no kernels.
#ifndef MPSK_COMMON_METAL
#define MPSK_COMMON_METAL
#include <metal_stdlib>
using namespace metal;

// INSTANTIATE_KERNEL(name): the kernel template `name` for an element type, with host name
// name_<float|half|bfloat>. A specialized library (ops/launch.py specialize) defines DTYPE,
// the one type its plan launches, and gets only that instantiation: Apple's compiler then
// builds one kernel, not three. Without DTYPE (the plain source) all three are made.
#define MPSK_STRINGIFY_(x) #x
#define MPSK_STRINGIFY(x) MPSK_STRINGIFY_(x)
#define MPSK_INSTANTIATE_AS(name, T) \
  template [[host_name(MPSK_STRINGIFY(name##_##T))]] [[kernel]] decltype(name<T>) name<T>;
#define MPSK_INSTANTIATE_EXPANDED(name, T) MPSK_INSTANTIATE_AS(name, T)
#ifdef DTYPE
#define INSTANTIATE_KERNEL(name) MPSK_INSTANTIATE_EXPANDED(name, DTYPE)
#else
#define INSTANTIATE_KERNEL(name) \
  MPSK_INSTANTIATE_AS(name, float) MPSK_INSTANTIATE_AS(name, half) MPSK_INSTANTIATE_AS(name, bfloat)
#endif

// Index math within a row (columns, features, their offsets) is 32-bit, as 64-bit integer
// operations are several times slower on Apple GPUs; a row's base offset stays 64-bit. The
// host (ops/launch.py wide_index) defines IDX64 when an index could pass 2^32 - 1.
#if IDX64
typedef ulong idx_t;
#else
typedef uint idx_t;
#endif

// Finite stand-ins for -inf and +inf. Under fast math (torch compiles Metal so when
// PYTORCH_MPS_FAST_MATH=1) the compiler may assume no value is infinite or NaN: `x == -inf`
// and `isfinite(x)` fold to constants and an infinite intermediate is undefined. The
// kernels therefore keep every value finite, mark "no value" with FINITE_MIN, and
// classify what they load from memory by its bits, which no float assumption can fold.
#define FINITE_MIN (-0x1.fffffep+127f)
#define FINITE_MAX 0x1.fffffep+127f
#define FINITE_MIN_INNER (-0x1.fffffcp+127f)  // the float next to FINITE_MIN, towards 0
#define FINITE_MAX_INNER 0x1.fffffcp+127f

// Classes of a value by its bits. Fast math also lets a function's float argument and
// result be assumed finite, so values are classified from a reference to what was loaded,
// and -inf or NaN results leave as integer bits (store_bits), never as float values.
enum class FloatClass { finite, neg_inf, pos_inf_or_nan };

template <typename T>
struct FloatBits;
template <>
struct FloatBits<float> {
  typedef uint bits;
  static inline FloatClass classify(thread const float& x) {
    const uint u = as_type<uint>(x);
    if ((u & 0x7f800000u) != 0x7f800000u) return FloatClass::finite;
    return u == 0xff800000u ? FloatClass::neg_inf : FloatClass::pos_inf_or_nan;
  }
  static inline uint store_bits(float v, FloatClass c) {
    return c == FloatClass::finite ? as_type<uint>(v) : c == FloatClass::neg_inf ? 0xff800000u : 0x7fc00000u;
  }
};
template <>
struct FloatBits<half> {
  typedef ushort bits;
  static inline FloatClass classify(thread const half& x) {
    const ushort u = as_type<ushort>(x);
    if ((u & 0x7c00) != 0x7c00) return FloatClass::finite;
    return u == 0xfc00 ? FloatClass::neg_inf : FloatClass::pos_inf_or_nan;
  }
  static inline ushort store_bits(float v, FloatClass c) {
    const half h = half(c == FloatClass::finite ? v : 0.0f);
    return c == FloatClass::finite ? as_type<ushort>(h) : c == FloatClass::neg_inf ? ushort(0xfc00) : ushort(0x7e00);
  }
};
template <>
struct FloatBits<bfloat> {
  typedef ushort bits;
  static inline FloatClass classify(thread const bfloat& x) {
    const ushort u = as_type<ushort>(x);
    if ((u & 0x7f80) != 0x7f80) return FloatClass::finite;
    return u == 0xff80 ? FloatClass::neg_inf : FloatClass::pos_inf_or_nan;
  }
  static inline ushort store_bits(float v, FloatClass c) {
    const bfloat b = bfloat(c == FloatClass::finite ? v : 0.0f);
    return c == FloatClass::finite ? as_type<ushort>(b) : c == FloatClass::neg_inf ? ushort(0xff80) : ushort(0x7fc0);
  }
};

template <typename T>
inline bool is_neg_inf(thread const T& x) {
  return FloatBits<T>::classify(x) == FloatClass::neg_inf;
}

// `x` as stored: its finite value (FINITE_MIN and FINITE_MAX themselves move one step
// inwards, which no T but float can hold), FINITE_MIN for -inf, FINITE_MAX for +inf or NaN.
template <typename T>
inline float finite_or_sentinel(thread const T& x) {
  const FloatClass c = FloatBits<T>::classify(x);
  if (c == FloatClass::neg_inf) return FINITE_MIN;
  if (c == FloatClass::pos_inf_or_nan) return FINITE_MAX;
  return clamp(float(x), FINITE_MIN_INNER, FINITE_MAX_INNER);
}
#endif
