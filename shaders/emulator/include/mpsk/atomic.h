// <metal_atomic>: atomic<T> in device and threadgroup memory, and the
// atomic_*_explicit functions on it.
//
// Threads of a launch take turns on one CPU thread and switch only at barriers
// and SIMD-group functions, so every operation here is indivisible, as Metal's
// are. Each read-modify-write
// records the bytes it touched: the order of atomic float additions changes
// their rounding, and the host's two-schedule check compares those bytes with
// a tolerance instead of exactly (see library.py).
#pragma once

// Not instrumented: an atomic is checked and counted whole by san_atomic (sanitizer.h), and is
// never a race.
#pragma clang attribute push(__attribute__((no_sanitize("kernel-address"))), apply_to = function)

namespace metal {

enum memory_order : int {
  memory_order_relaxed = 0,
  memory_order_acquire = 2,
  memory_order_release = 3,
  memory_order_acq_rel = 4,
  memory_order_seq_cst = 5,
};

enum class thread_scope : int {
  thread_scope_thread,
  thread_scope_simdgroup,
  thread_scope_threadgroup,
  thread_scope_device,
  thread_scope_system,
};
using enum thread_scope;
// `coherent(device)` / `coherent(system)` (Metal 3.2) qualify memory whose writes other threads
// or the CPU may see; threads here share one address space in one order, so it changes nothing.
#define coherent(scope)

template <class T>
struct atomic {
  static_assert(__is_same(T, int) || __is_same(T, uint) || __is_same(T, bool) || __is_same(T, float) ||
                    __is_same(T, ulong) || __is_same(T, long),
                "Metal has atomic<T> for int, uint, bool, float and (64-bit min/max) ulong only");
  T value_;
};
}  // namespace metal

template <class T>
struct mpsk_rt::keeps_space<metal::atomic<T>> {
  static constexpr bool value = true;
};

namespace metal {

using atomic_int = atomic<int>;
using atomic_uint = atomic<uint>;
using atomic_bool = atomic<bool>;
using atomic_float = atomic<float>;

namespace atomic_detail {

template <class P>
using object = __remove_cv(typename strip_as<__remove_cv(P)>::type);
template <class A>
struct value_of;
template <class T>
struct value_of<atomic<T>> {
  using type = T;
};
template <class P>
using value_t = typename value_of<object<P>>::type;

template <class P>
inline value_t<P>* slot(P* obj) {
  // Generic (0) too: an atomic member of a class in device memory arrives without its
  // address space, which the pre-pass drops for class types (prepass/address_spaces.py).
  static_assert(mpsk_rt::as_of<__remove_cv(P)>::value != 2, "Metal atomics cannot live in constant memory");
  value_t<P>* s = &((object<P>*)(unsigned long)obj)->value_;
  mpsk_rt::san_atomic(s, sizeof(value_t<P>));
  return s;
}

template <class T>
inline void touched(T* p, double magnitude = 0.0) {
  mpsk_rt::note_atomic(p, sizeof(T), magnitude);
}

inline double mag(float x) { return x < 0 ? -(double)x : (double)x; }

}  // namespace atomic_detail

template <class P, class U>
inline void atomic_store_explicit(P* obj, U desired, memory_order) {
  *atomic_detail::slot(obj) = (atomic_detail::value_t<P>)desired;
}

template <class P>
inline atomic_detail::value_t<P> atomic_load_explicit(P* obj, memory_order) {
  return *atomic_detail::slot(obj);
}

template <class P, class U>
inline atomic_detail::value_t<P> atomic_exchange_explicit(P* obj, U desired, memory_order) {
  auto* s = atomic_detail::slot(obj);
  atomic_detail::touched(s);
  const auto old = *s;
  *s = (atomic_detail::value_t<P>)desired;
  return old;
}

// Never fails spuriously here; Metal's weak form may, so callers loop either way.
template <class P, class E, class U>
inline bool atomic_compare_exchange_weak_explicit(P* obj, E* expected, U desired, memory_order, memory_order) {
  using T = atomic_detail::value_t<P>;
  auto* s = atomic_detail::slot(obj);
  atomic_detail::touched(s);
  T* want = (T*)(unsigned long)expected;
  if (__builtin_memcmp(s, want, sizeof(T)) == 0) {
    *s = (T)desired;
    return true;
  }
  *want = *s;
  return false;
}

template <class P, class E, class U>
inline bool atomic_compare_exchange_strong_explicit(P* obj, E* expected, U desired, memory_order a,
                                                    memory_order b) {
  return atomic_compare_exchange_weak_explicit(obj, expected, desired, a, b);
}

#define MPSK_ATOMIC_RMW(name, op)                                                              \
  template <class P, class U>                                                                  \
  inline atomic_detail::value_t<P> atomic_fetch_##name##_explicit(P* obj, U arg, memory_order) { \
    using T = atomic_detail::value_t<P>;                                                       \
    auto* s = atomic_detail::slot(obj);                                                        \
    const T old = *s;                                                                          \
    const T v = (T)arg;                                                                        \
    *s = op;                                                                                   \
    if constexpr (__is_same(T, float)) {                                                       \
      const double m = atomic_detail::mag(old) > atomic_detail::mag(*s) ? atomic_detail::mag(old) \
                                                                        : atomic_detail::mag(*s); \
      atomic_detail::touched(s, m > atomic_detail::mag(v) ? m : atomic_detail::mag(v));        \
    } else {                                                                                   \
      atomic_detail::touched(s);                                                               \
    }                                                                                          \
    return old;                                                                                \
  }
MPSK_ATOMIC_RMW(add, (T)(old + v))
MPSK_ATOMIC_RMW(sub, (T)(old - v))
MPSK_ATOMIC_RMW(and, (T)(old & v))
MPSK_ATOMIC_RMW(or, (T)(old | v))
MPSK_ATOMIC_RMW(xor, (T)(old ^ v))
MPSK_ATOMIC_RMW(min, (v < old ? v : old))
MPSK_ATOMIC_RMW(max, (v > old ? v : old))
#undef MPSK_ATOMIC_RMW

inline void atomic_thread_fence(mem_flags, memory_order, thread_scope = thread_scope::thread_scope_device) {}

}  // namespace metal

#pragma clang attribute pop
