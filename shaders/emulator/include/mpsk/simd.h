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

// Metal's SIMD- and quad-group functions take scalars and vectors of 8-, 16- and 32-bit types;
// a 64-bit value goes through as_type<uint2> (as c10's and MLX's 64-bit reductions do).
template <class T>
inline constexpr bool metal_lane_type = sizeof(typename vinfo<T>::elem) <= 4;
#define MPSK_LANE_TYPE(what) \
  static_assert(simd_detail::metal_lane_type<T>, what " on a 64-bit type: Metal has none (use as_type<uint2>)")

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
  template <class T> static T identity(const T&) { return T(0); }
};
struct Prod {
  template <class T> static T apply(const T& a, const T& b) { return a * b; }
  template <class T> static T identity(const T&) { return T(1); }
};
// As fmax and fmin (MSL specification, SIMD-group functions): a NaN lane is ignored, and the
// result is NaN only when every lane is; a kernel that needs NaN to propagate checks for it (as
// c10's simd_max does with simd_any(isnan(...))).
struct Max {
  template <class T> static T apply(const T& a, const T& b) {
    return lanewise(a, b, [](auto x, auto y) { return isnan_(x) ? y : (isnan_(y) || !(y > x)) ? x : y; });
  }
};
struct Min {
  template <class T> static T apply(const T& a, const T& b) {
    return lanewise(a, b, [](auto x, auto y) { return isnan_(x) ? y : (isnan_(y) || !(y < x)) ? x : y; });
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

// Combine functions get the SIMD-group's lanes by lane id, nullptr where a lane
// is inactive (it did not call this function), and n, the group's lane count.

inline int first_active(Thread* const* lanes, int n) {
  for (int i = 0; i < n; ++i)
    if (lanes[i]) return i;
  return -1;
}

template <class T, class Op>
void reduce(Thread* const* lanes, int n) {
  const int f = first_active(lanes, n);
  T acc = in<T>(lanes[f]);
  for (int i = f + 1; i < n; ++i)
    if (lanes[i]) acc = Op::apply(acc, in<T>(lanes[i]));
  for (int i = 0; i < n; ++i)
    if (lanes[i]) out(lanes[i], acc);
}

template <class T, class Op, bool Inclusive>
void prefix(Thread* const* lanes, int n) {
  bool started = false;
  T acc{};
  for (int i = 0; i < n; ++i) {
    if (!lanes[i]) continue;
    const T v = in<T>(lanes[i]);
    if (Inclusive) {
      acc = started ? Op::apply(acc, v) : v;
      out(lanes[i], acc);
    } else {
      out(lanes[i], started ? acc : Op::identity(v));
      acc = started ? Op::apply(acc, v) : v;
    }
    started = true;
  }
}

inline bool uniform_iarg(Thread* const* lanes, int n, const char* what) {
  const int f = first_active(lanes, n);
  for (int i = f + 1; i < n; ++i)
    if (lanes[i] && lanes[i]->iarg != lanes[f]->iarg) {
      mpsk_rt::fail("%s (line %u): the lane argument must be uniform across the SIMD-group, "
                    "but lane %d passed %ld and lane %d passed %ld",
                    what, lanes[f]->site.line, f, lanes[f]->iarg, i, lanes[i]->iarg);
      return false;
    }
  return true;
}

// The value lane `src` supplies: poisoned, and noted, when that lane is inactive, past the end
// of a partial SIMD-group (a lane no thread was launched for) or outside the SIMD-group, as
// reading it is undefined on the GPU.
template <class T>
inline void take(Thread* dst, Thread* const* lanes, int n, long src) {
  if (src >= 0 && src < n && lanes[src]) {
    out(dst, in<T>(lanes[src]));
  } else {
    mpsk_rt::note_undefined(dst->site.what, dst->site.line, dst->a[mpsk_rt::thread_index_in_simdgroup][0], (int)src);
    poison(dst);
  }
}

template <class T>
void shuffle(Thread* const* lanes, int n) {
  for (int i = 0; i < n; ++i)
    if (lanes[i]) take<T>(lanes[i], lanes, n, lanes[i]->iarg);
}

template <class T>
void shuffle_xor(Thread* const* lanes, int n) {
  for (int i = 0; i < n; ++i)
    if (lanes[i]) take<T>(lanes[i], lanes, n, i ^ lanes[i]->iarg);
}

// Lanes whose source lies outside the SIMD width keep their own value; a source
// inside the width but past the end of a partial SIMD-group is undefined.
template <class T, int Dir>
void shuffle_shift(Thread* const* lanes, int n) {
  if (!uniform_iarg(lanes, n, lanes[first_active(lanes, n)]->site.what)) return;
  const long delta = lanes[first_active(lanes, n)]->iarg;
  for (int i = 0; i < n; ++i) {
    if (!lanes[i]) continue;
    const long src = i + Dir * delta;
    if (src < 0 || src >= mpsk_rt::kSimdWidth) {
      out(lanes[i], in<T>(lanes[i]));
    } else {
      take<T>(lanes[i], lanes, n, src);
    }
  }
}

// Rotation is over the SIMD width; in a partial SIMD-group a source past the
// last lane is undefined (poisoned) rather than wrapped among the lanes present.
template <class T, int Dir>
void shuffle_rotate(Thread* const* lanes, int n) {
  if (!uniform_iarg(lanes, n, lanes[first_active(lanes, n)]->site.what)) return;
  const long delta = lanes[first_active(lanes, n)]->iarg;
  constexpr long w = mpsk_rt::kSimdWidth;
  for (int i = 0; i < n; ++i)
    if (lanes[i]) take<T>(lanes[i], lanes, n, ((i + Dir * delta) % w + w) % w);
}

// simd_shuffle_and_fill_{down,up}(data, filling, delta, modulo): within each
// segment of `modulo` lanes, a lane whose source falls past the segment's edge
// takes the filling value of the lane that far into the segment from the other
// edge (MSL spec 6.9.2). Each lane's input holds data, then filling at byte 16.
template <class T, int Dir>
void shuffle_fill(Thread* const* lanes, int n) {
  const int f = first_active(lanes, n);
  if (!uniform_iarg(lanes, n, lanes[f]->site.what)) return;
  const long delta = lanes[f]->iarg & 0xffff;
  const long modulo = lanes[f]->iarg >> 16;
  for (int i = 0; i < n; ++i) {
    if (!lanes[i]) continue;
    const long base = i - i % modulo, j = i % modulo + Dir * delta;
    const bool fill = j < 0 || j >= modulo;
    const long src = base + (fill ? j - Dir * modulo : j);
    if (src >= 0 && src < n && lanes[src]) {
      T v;
      memcpy(&v, lanes[src]->in + (fill ? 16 : 0), sizeof(T));
      out(lanes[i], v);
    } else {
      mpsk_rt::note_undefined(lanes[i]->site.what, lanes[i]->site.line, i, (int)src);
      poison(lanes[i]);
    }
  }
}

template <class T>
void broadcast(Thread* const* lanes, int n) {
  if (!uniform_iarg(lanes, n, "simd_broadcast")) return;
  const long src = lanes[first_active(lanes, n)]->iarg;
  if (src < 0 || src >= n || !lanes[src]) {
    mpsk_rt::fail("simd_broadcast (line %u) from lane %ld, which is not an active lane of this SIMD-group of %d "
                  "lanes",
                  lanes[first_active(lanes, n)]->site.line, src, n);
    return;
  }
  const T v = in<T>(lanes[src]);
  for (int i = 0; i < n; ++i)
    if (lanes[i]) out(lanes[i], v);
}

template <class T>
void broadcast_first(Thread* const* lanes, int n) {
  const T v = in<T>(lanes[first_active(lanes, n)]);
  for (int i = 0; i < n; ++i)
    if (lanes[i]) out(lanes[i], v);
}

// Bit i set where lane i is active and passed true.
inline void ballot(Thread* const* lanes, int n) {
  unsigned long bits = 0;
  for (int i = 0; i < n; ++i)
    if (lanes[i] && in<bool>(lanes[i])) bits |= 1ul << i;
  for (int i = 0; i < n; ++i)
    if (lanes[i]) out(lanes[i], bits);
}

inline void is_first(Thread* const* lanes, int n) {
  const int f = first_active(lanes, n);
  for (int i = 0; i < n; ++i)
    if (lanes[i]) out(lanes[i], i == f);
}

// Quad-group functions: the SIMD-group's lanes in groups of four.
template <class T, class Op>
void quad_reduce(Thread* const* lanes, int n) {
  for (int q = 0; q < n; q += 4) {
    const int end = q + 4 < n ? q + 4 : n;
    int f = -1;
    for (int i = q; i < end; ++i)
      if (lanes[i]) { f = i; break; }
    if (f < 0) continue;
    T acc = in<T>(lanes[f]);
    for (int i = f + 1; i < end; ++i)
      if (lanes[i]) acc = Op::apply(acc, in<T>(lanes[i]));
    for (int i = q; i < end; ++i)
      if (lanes[i]) out(lanes[i], acc);
  }
}

template <class T>
void quad_shuffle(Thread* const* lanes, int n) {
  for (int i = 0; i < n; ++i)
    if (lanes[i]) {
      const long src = lanes[i]->iarg;
      take<T>(lanes[i], lanes, n, src >= 0 && src < 4 ? i - i % 4 + src : -1);
    }
}

template <class T>
void quad_shuffle_xor(Thread* const* lanes, int n) {
  for (int i = 0; i < n; ++i)
    if (lanes[i]) {
      const long src = (i % 4) ^ lanes[i]->iarg;
      take<T>(lanes[i], lanes, n, src >= 0 && src < 4 ? i - i % 4 + src : -1);
    }
}

template <class T, int Dir>
void quad_shuffle_shift(Thread* const* lanes, int n) {
  const int f = first_active(lanes, n);
  if (!uniform_iarg(lanes, n, lanes[f]->site.what)) return;
  const long delta = lanes[f]->iarg;
  for (int i = 0; i < n; ++i) {
    if (!lanes[i]) continue;
    const long j = i % 4 + Dir * delta;
    if (j < 0 || j >= 4) {
      out(lanes[i], in<T>(lanes[i]));
    } else {
      take<T>(lanes[i], lanes, n, i - i % 4 + j);
    }
  }
}

}  // namespace simd_detail

#define MPSK_SIMD_REDUCE(name, Op)                                                     \
  template <class T>                                                                   \
  inline T simd_##name(T x, MPSK_SITE_PARAMS) {                                        \
    MPSK_LANE_TYPE("simd_" #name);                                                     \
    return simd_detail::call(x, 0, simd_detail::reduce<T, simd_detail::Op>, MPSK_SITE("simd_" #name)); \
  }                                                                                    \
  template <class T>                                                                   \
  inline T quad_##name(T x, MPSK_SITE_PARAMS) {                                        \
    MPSK_LANE_TYPE("quad_" #name);                                                     \
    return simd_detail::call(x, 0, simd_detail::quad_reduce<T, simd_detail::Op>, MPSK_SITE("quad_" #name)); \
  }
MPSK_SIMD_REDUCE(sum, Sum)
MPSK_SIMD_REDUCE(product, Prod)
MPSK_SIMD_REDUCE(max, Max)
MPSK_SIMD_REDUCE(min, Min)
MPSK_SIMD_REDUCE(and, And)
MPSK_SIMD_REDUCE(or, Or)
MPSK_SIMD_REDUCE(xor, Xor)
#undef MPSK_SIMD_REDUCE

// simd_prod is this project's older spelling; Metal's name is simd_product.
template <class T>
inline T simd_prod(T x, MPSK_SITE_PARAMS) {
  MPSK_LANE_TYPE("simd_product");
  return simd_detail::call(x, 0, simd_detail::reduce<T, simd_detail::Prod>, MPSK_SITE("simd_product"));
}

#define MPSK_SIMD_PREFIX(name, Op, inclusive)                                                  \
  template <class T>                                                                           \
  inline T name(T x, MPSK_SITE_PARAMS) {                                                       \
    MPSK_LANE_TYPE(#name);                                                                     \
    return simd_detail::call(x, 0, simd_detail::prefix<T, simd_detail::Op, inclusive>, MPSK_SITE(#name)); \
  }
MPSK_SIMD_PREFIX(simd_prefix_inclusive_sum, Sum, true)
MPSK_SIMD_PREFIX(simd_prefix_exclusive_sum, Sum, false)
MPSK_SIMD_PREFIX(simd_prefix_inclusive_product, Prod, true)
MPSK_SIMD_PREFIX(simd_prefix_exclusive_product, Prod, false)
#undef MPSK_SIMD_PREFIX

#define MPSK_SIMD_SHUFFLE(name, fn)                                                      \
  template <class T>                                                                     \
  inline T name(T x, ushort arg, MPSK_SITE_PARAMS) {                                     \
    MPSK_LANE_TYPE(#name);                                                               \
    return simd_detail::call(x, (long)arg, fn, MPSK_SITE(#name));                        \
  }
MPSK_SIMD_SHUFFLE(simd_shuffle, simd_detail::shuffle<T>)
MPSK_SIMD_SHUFFLE(simd_shuffle_xor, simd_detail::shuffle_xor<T>)
MPSK_SIMD_SHUFFLE(simd_shuffle_down, (simd_detail::shuffle_shift<T, 1>))
MPSK_SIMD_SHUFFLE(simd_shuffle_up, (simd_detail::shuffle_shift<T, -1>))
MPSK_SIMD_SHUFFLE(simd_shuffle_rotate_down, (simd_detail::shuffle_rotate<T, 1>))
MPSK_SIMD_SHUFFLE(simd_shuffle_rotate_up, (simd_detail::shuffle_rotate<T, -1>))
MPSK_SIMD_SHUFFLE(simd_broadcast, simd_detail::broadcast<T>)
MPSK_SIMD_SHUFFLE(quad_shuffle, simd_detail::quad_shuffle<T>)
MPSK_SIMD_SHUFFLE(quad_shuffle_xor, simd_detail::quad_shuffle_xor<T>)
MPSK_SIMD_SHUFFLE(quad_shuffle_down, (simd_detail::quad_shuffle_shift<T, 1>))
MPSK_SIMD_SHUFFLE(quad_shuffle_up, (simd_detail::quad_shuffle_shift<T, -1>))
MPSK_SIMD_SHUFFLE(quad_broadcast, simd_detail::quad_shuffle<T>)
#undef MPSK_SIMD_SHUFFLE

namespace simd_detail {
template <class T, int Dir>
inline T fill_call(T data, T filling, ushort delta, ushort modulo, const mpsk_rt::Site& site) {
  static_assert(sizeof(T) <= 16, "simd_shuffle_and_fill on a type wider than 16 bytes");
  MPSK_LANE_TYPE("simd_shuffle_and_fill");
  if (modulo == 0 || modulo > mpsk_rt::kSimdWidth || (modulo & (modulo - 1)) || delta >= modulo)
    mpsk_rt::trap("%s (line %u): modulo must be a power of two up to %d and delta below it, got delta %u "
                  "modulo %u",
                  site.what, site.line, mpsk_rt::kSimdWidth, delta, modulo);
  Thread* t = mpsk_rt::T;
  memcpy(t->in, &data, sizeof(T));
  memcpy(t->in + 16, &filling, sizeof(T));
  t->iarg = (long)delta | ((long)modulo << 16);
  mpsk_rt::block(mpsk_rt::Sync::Simd, site, shuffle_fill<T, Dir>);
  T r;
  memcpy(&r, t->out, sizeof(T));
  return r;
}
}  // namespace simd_detail

template <class T>
inline T simd_shuffle_and_fill_down(T data, T filling, ushort delta, MPSK_SITE_PARAMS) {
  return simd_detail::fill_call<T, 1>(data, filling, delta, mpsk_rt::kSimdWidth,
                                      MPSK_SITE("simd_shuffle_and_fill_down"));
}
template <class T>
inline T simd_shuffle_and_fill_down(T data, T filling, ushort delta, ushort modulo, MPSK_SITE_PARAMS) {
  return simd_detail::fill_call<T, 1>(data, filling, delta, modulo, MPSK_SITE("simd_shuffle_and_fill_down"));
}
template <class T>
inline T simd_shuffle_and_fill_up(T data, T filling, ushort delta, MPSK_SITE_PARAMS) {
  return simd_detail::fill_call<T, -1>(data, filling, delta, mpsk_rt::kSimdWidth,
                                       MPSK_SITE("simd_shuffle_and_fill_up"));
}
template <class T>
inline T simd_shuffle_and_fill_up(T data, T filling, ushort delta, ushort modulo, MPSK_SITE_PARAMS) {
  return simd_detail::fill_call<T, -1>(data, filling, delta, modulo, MPSK_SITE("simd_shuffle_and_fill_up"));
}

template <class T>
inline T simd_broadcast_first(T x, MPSK_SITE_PARAMS) {
  return simd_detail::call(x, 0, simd_detail::broadcast_first<T>, MPSK_SITE("simd_broadcast_first"));
}

// simd_vote: one bit per lane (MSL 6.9.2); simd_ballot and simd_active_threads_mask make one.
struct simd_vote {
  using vote_t = ulong;
  constexpr simd_vote() = default;
  explicit constexpr simd_vote(vote_t v) : v_(v) {}
  explicit constexpr operator vote_t() const { return v_; }
  constexpr bool all() const { return v_ == (mpsk_rt::kSimdWidth == 64 ? ~0ul : (1ul << mpsk_rt::kSimdWidth) - 1); }
  constexpr bool any() const { return v_ != 0; }

 private:
  vote_t v_ = 0;
};
using quad_vote = simd_vote;

inline simd_vote simd_ballot(bool x, MPSK_SITE_PARAMS) {
  return simd_vote(simd_detail::call((ulong)x, 0, simd_detail::ballot, MPSK_SITE("simd_ballot")));
}
inline simd_vote simd_active_threads_mask(MPSK_SITE_PARAMS) {
  return simd_vote(simd_detail::call(1ul, 0, simd_detail::ballot, MPSK_SITE("simd_active_threads_mask")));
}
inline bool simd_is_first(MPSK_SITE_PARAMS) {
  return simd_detail::call(false, 0, simd_detail::is_first, MPSK_SITE("simd_is_first"));
}
inline bool simd_all(bool x, MPSK_SITE_PARAMS) {
  return simd_detail::call(x, 0, simd_detail::reduce<bool, simd_detail::And>, MPSK_SITE("simd_all"));
}
inline bool simd_any(bool x, MPSK_SITE_PARAMS) {
  return simd_detail::call(x, 0, simd_detail::reduce<bool, simd_detail::Or>, MPSK_SITE("simd_any"));
}
inline bool quad_all(bool x, MPSK_SITE_PARAMS) {
  return simd_detail::call(x, 0, simd_detail::quad_reduce<bool, simd_detail::And>, MPSK_SITE("quad_all"));
}
inline bool quad_any(bool x, MPSK_SITE_PARAMS) {
  return simd_detail::call(x, 0, simd_detail::quad_reduce<bool, simd_detail::Or>, MPSK_SITE("quad_any"));
}

}  // namespace metal
