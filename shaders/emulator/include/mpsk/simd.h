// Barriers and SIMD-group functions.
//
// Each call site is identified by file, line and column (the caller's, through
// clang's __builtin_LINE and friends), so lanes that reach different calls are
// reported as divergent. Reading a lane that is not part of the SIMD-group
// (past the end of a partial group) gives a poisoned value, as undefined on
// the GPU; arguments Metal requires to be uniform are checked.
#pragma once

namespace metal {

enum class mem_flags : int {
  mem_none = 0,
  mem_device = 1,
  mem_threadgroup = 2,
  mem_texture = 4,
  mem_threadgroup_imageblock = 8,
};
constexpr mem_flags operator|(mem_flags a, mem_flags b) {
  return static_cast<mem_flags>(static_cast<int>(a) | static_cast<int>(b));
}

#define MPSK_SITE_PARAMS                                                              \
  const char *mpsk_file = __builtin_FILE(), unsigned mpsk_line = __builtin_LINE(), \
             unsigned mpsk_col = __builtin_COLUMN()
#define MPSK_SITE(what) (mpsk_rt::Site{what, mpsk_file, mpsk_line, mpsk_col})

inline void threadgroup_barrier(mem_flags, MPSK_SITE_PARAMS) {
  mpsk_rt::block(mpsk_rt::Sync::Barrier, MPSK_SITE("threadgroup_barrier"), nullptr);
}

inline void simdgroup_barrier(mem_flags, MPSK_SITE_PARAMS) {
  mpsk_rt::block(mpsk_rt::Sync::Simd, MPSK_SITE("simdgroup_barrier"), nullptr);
}

namespace simd_detail {

using mpsk_rt::Thread;

template <class T>
inline T in(const Thread* t) {
  T v;
  memcpy(&v, t->in, sizeof(T));
  return v;
}

template <class T>
inline void out(Thread* t, const T& v) {
  memcpy(t->out, &v, sizeof(T));
}

inline void poison(Thread* t) { memset(t->out, mpsk_rt::kPoison, sizeof t->out); }

template <class T>
inline T call(const T& x, long iarg, mpsk_rt::CombineFn fn, const mpsk_rt::Site& site) {
  static_assert(sizeof(T) <= sizeof(Thread::in), "SIMD-group function on a type wider than 32 bytes");
  Thread* t = mpsk_rt::T;
  memcpy(t->in, &x, sizeof(T));
  t->iarg = iarg;
  mpsk_rt::block(mpsk_rt::Sync::Simd, site, fn);
  T r;
  memcpy(&r, t->out, sizeof(T));
  return r;
}

template <class T, class F>
inline T lanewise(const T& a, const T& b, F f) {
  if constexpr (is_vector_v<T>) {
    T r;
    for (int i = 0; i < vinfo<T>::lanes; ++i) r[i] = f(a[i], b[i]);
    return r;
  } else {
    return f(a, b);
  }
}

template <class E>
inline bool isnan_(E v) {
  return v != v;
}

struct Sum {
  template <class T> static T apply(const T& a, const T& b) { return a + b; }
};
struct Prod {
  template <class T> static T apply(const T& a, const T& b) { return a * b; }
};
// NaN wins, so a NaN in any lane is never hidden by the reduction.
struct Max {
  template <class T> static T apply(const T& a, const T& b) {
    return lanewise(a, b, [](auto x, auto y) { return isnan_(x) ? x : (isnan_(y) || y > x) ? y : x; });
  }
};
struct Min {
  template <class T> static T apply(const T& a, const T& b) {
    return lanewise(a, b, [](auto x, auto y) { return isnan_(x) ? x : (isnan_(y) || y < x) ? y : x; });
  }
};
struct And {
  template <class T> static T apply(const T& a, const T& b) { return a & b; }
};
struct Or {
  template <class T> static T apply(const T& a, const T& b) { return a | b; }
};
struct Xor {
  template <class T> static T apply(const T& a, const T& b) { return a ^ b; }
};

template <class T, class Op>
void reduce(Thread* const* lanes, int n) {
  T acc = in<T>(lanes[0]);
  for (int i = 1; i < n; ++i) acc = Op::apply(acc, in<T>(lanes[i]));
  for (int i = 0; i < n; ++i) out(lanes[i], acc);
}

template <class T, bool Inclusive>
void prefix_sum(Thread* const* lanes, int n) {
  T acc = T(0);
  for (int i = 0; i < n; ++i) {
    const T v = in<T>(lanes[i]);
    if (Inclusive) acc = acc + v;
    out(lanes[i], acc);
    if (!Inclusive) acc = acc + v;
  }
}

inline bool uniform_iarg(Thread* const* lanes, int n, const char* what) {
  for (int i = 1; i < n; ++i)
    if (lanes[i]->iarg != lanes[0]->iarg) {
      mpsk_rt::fail("%s (line %u): the lane argument must be uniform across the SIMD-group, "
                    "but lane 0 passed %ld and lane %d passed %ld",
                    what, lanes[0]->site.line, lanes[0]->iarg, i, lanes[i]->iarg);
      return false;
    }
  return true;
}

template <class T>
void shuffle(Thread* const* lanes, int n) {
  for (int i = 0; i < n; ++i) {
    const long src = lanes[i]->iarg;
    if (src >= 0 && src < n) {
      out(lanes[i], in<T>(lanes[src]));
    } else {
      poison(lanes[i]);
    }
  }
}

template <class T>
void shuffle_xor(Thread* const* lanes, int n) {
  for (int i = 0; i < n; ++i) {
    const long src = i ^ lanes[i]->iarg;
    if (src >= 0 && src < n) {
      out(lanes[i], in<T>(lanes[src]));
    } else {
      poison(lanes[i]);
    }
  }
}

// Lanes whose source lies outside the SIMD width keep their own value; a source
// inside the width but past the end of a partial SIMD-group is undefined.
template <class T, int Dir>
void shuffle_shift(Thread* const* lanes, int n) {
  if (!uniform_iarg(lanes, n, lanes[0]->site.what)) return;
  const long delta = lanes[0]->iarg;
  for (int i = 0; i < n; ++i) {
    const long src = i + Dir * delta;
    if (src < 0 || src >= mpsk_rt::kSimdWidth) {
      out(lanes[i], in<T>(lanes[i]));
    } else if (src < n) {
      out(lanes[i], in<T>(lanes[src]));
    } else {
      poison(lanes[i]);
    }
  }
}

// Rotation is over the SIMD width; in a partial SIMD-group a source past the
// last lane is undefined (poisoned) rather than wrapped among the lanes present.
template <class T, int Dir>
void shuffle_rotate(Thread* const* lanes, int n) {
  if (!uniform_iarg(lanes, n, lanes[0]->site.what)) return;
  const long delta = lanes[0]->iarg;
  constexpr long w = mpsk_rt::kSimdWidth;
  for (int i = 0; i < n; ++i) {
    const long src = ((i + Dir * delta) % w + w) % w;
    if (src < n) {
      out(lanes[i], in<T>(lanes[src]));
    } else {
      poison(lanes[i]);
    }
  }
}

template <class T>
void broadcast(Thread* const* lanes, int n) {
  if (!uniform_iarg(lanes, n, "simd_broadcast")) return;
  const long src = lanes[0]->iarg;
  if (src < 0 || src >= n) {
    mpsk_rt::fail("simd_broadcast (line %u) from lane %ld, which is not in this SIMD-group of %d lanes",
                  lanes[0]->site.line, src, n);
    return;
  }
  const T v = in<T>(lanes[src]);
  for (int i = 0; i < n; ++i) out(lanes[i], v);
}

}  // namespace simd_detail

#define MPSK_SIMD_REDUCE(name, Op)                                                     \
  template <class T>                                                                   \
  inline T name(T x, MPSK_SITE_PARAMS) {                                               \
    return simd_detail::call(x, 0, simd_detail::reduce<T, simd_detail::Op>, MPSK_SITE(#name)); \
  }
MPSK_SIMD_REDUCE(simd_sum, Sum)
MPSK_SIMD_REDUCE(simd_prod, Prod)
MPSK_SIMD_REDUCE(simd_max, Max)
MPSK_SIMD_REDUCE(simd_min, Min)
MPSK_SIMD_REDUCE(simd_and, And)
MPSK_SIMD_REDUCE(simd_or, Or)
MPSK_SIMD_REDUCE(simd_xor, Xor)
#undef MPSK_SIMD_REDUCE

template <class T>
inline T simd_prefix_inclusive_sum(T x, MPSK_SITE_PARAMS) {
  return simd_detail::call(x, 0, simd_detail::prefix_sum<T, true>,
                           MPSK_SITE("simd_prefix_inclusive_sum"));
}
template <class T>
inline T simd_prefix_exclusive_sum(T x, MPSK_SITE_PARAMS) {
  return simd_detail::call(x, 0, simd_detail::prefix_sum<T, false>,
                           MPSK_SITE("simd_prefix_exclusive_sum"));
}

#define MPSK_SIMD_SHUFFLE(name, fn)                                                      \
  template <class T>                                                                     \
  inline T name(T x, ushort arg, MPSK_SITE_PARAMS) {                                     \
    return simd_detail::call(x, (long)arg, fn, MPSK_SITE(#name));                        \
  }
MPSK_SIMD_SHUFFLE(simd_shuffle, simd_detail::shuffle<T>)
MPSK_SIMD_SHUFFLE(simd_shuffle_xor, simd_detail::shuffle_xor<T>)
MPSK_SIMD_SHUFFLE(simd_shuffle_down, (simd_detail::shuffle_shift<T, 1>))
MPSK_SIMD_SHUFFLE(simd_shuffle_up, (simd_detail::shuffle_shift<T, -1>))
MPSK_SIMD_SHUFFLE(simd_shuffle_rotate_down, (simd_detail::shuffle_rotate<T, 1>))
MPSK_SIMD_SHUFFLE(simd_shuffle_rotate_up, (simd_detail::shuffle_rotate<T, -1>))
MPSK_SIMD_SHUFFLE(simd_broadcast, simd_detail::broadcast<T>)
#undef MPSK_SIMD_SHUFFLE

template <class T>
inline T simd_broadcast_first(T x, MPSK_SITE_PARAMS) {
  return simd_detail::call(x, 0, simd_detail::broadcast<T>, MPSK_SITE("simd_broadcast_first"));
}

inline bool simd_all(bool x, MPSK_SITE_PARAMS) {
  return simd_detail::call(x, 0, simd_detail::reduce<bool, simd_detail::And>, MPSK_SITE("simd_all"));
}
inline bool simd_any(bool x, MPSK_SITE_PARAMS) {
  return simd_detail::call(x, 0, simd_detail::reduce<bool, simd_detail::Or>, MPSK_SITE("simd_any"));
}

}  // namespace metal
