// packed_<type><n> vectors and uniform<T>.
//
// A packed vector has the size of its elements and their alignment (packed_float3 is 12
// bytes, 4-aligned, where float3 is 16 and 16): how Metal reads tightly packed xyz data.
// It converts to and from the ordinary vector; arithmetic on it gives ordinary vectors.
#pragma once

namespace metal {

template <class T, int N>
struct packed_vec;

#define MPSK_PACKED_BODY(N)                                                          \
  constexpr packed_vec() = default;                                                  \
  constexpr packed_vec(vec<T, N> v) { *this = v; }                                   \
  template <class... S>                                                              \
    requires(sizeof...(S) == N && N > 1)                                             \
  constexpr packed_vec(S... s) : e{static_cast<T>(s)...} {}                          \
  constexpr packed_vec& operator=(vec<T, N> v) {                                     \
    for (int i = 0; i < N; ++i) e[i] = v[i];                                         \
    return *this;                                                                    \
  }                                                                                  \
  constexpr operator vec<T, N>() const {                                             \
    vec<T, N> v;                                                                     \
    for (int i = 0; i < N; ++i) v[i] = e[i];                                         \
    return v;                                                                        \
  }                                                                                  \
  constexpr thread T& operator[](int i) { return e[check(i)]; }                      \
  constexpr const thread T& operator[](int i) const { return e[check(i)]; }          \
  static constexpr int check(int i) {                                                \
    if (!__builtin_is_constant_evaluated() && (i < 0 || i >= N))                     \
      mpsk_rt::trap("packed vector index %d out of range for %d elements", i, N);    \
    return i;                                                                        \
  }

template <class T>
struct packed_vec<T, 2> {
  union {
    T e[2];
    struct {
      T x, y;
    };
    struct {
      T r, g;
    };
  };
  MPSK_PACKED_BODY(2)
};
template <class T>
struct packed_vec<T, 3> {
  union {
    T e[3];
    struct {
      T x, y, z;
    };
    struct {
      T r, g, b;
    };
  };
  MPSK_PACKED_BODY(3)
};
template <class T>
struct packed_vec<T, 4> {
  union {
    T e[4];
    struct {
      T x, y, z, w;
    };
    struct {
      T r, g, b, a;
    };
  };
  MPSK_PACKED_BODY(4)
};
#undef MPSK_PACKED_BODY

#define MPSK_PACKED_OP(op)                                                             \
  template <class T, int N>                                                            \
  constexpr vec<T, N> operator op(const packed_vec<T, N>& a, const packed_vec<T, N>& b) { \
    return vec<T, N>(a) op vec<T, N>(b);                                               \
  }                                                                                    \
  template <class T, int N, class U>                                                   \
  constexpr vec<T, N> operator op(const packed_vec<T, N>& a, const U& b) {             \
    return vec<T, N>(a) op b;                                                          \
  }                                                                                    \
  template <class T, int N, class U>                                                   \
  constexpr vec<T, N> operator op(const U& a, const packed_vec<T, N>& b) {             \
    return a op vec<T, N>(b);                                                          \
  }
MPSK_PACKED_OP(+)
MPSK_PACKED_OP(-)
MPSK_PACKED_OP(*)
MPSK_PACKED_OP(/)
#undef MPSK_PACKED_OP

#define MPSK_PACKED(T)                   \
  typedef packed_vec<T, 2> packed_##T##2; \
  typedef packed_vec<T, 3> packed_##T##3; \
  typedef packed_vec<T, 4> packed_##T##4;
MPSK_PACKED(float)
MPSK_PACKED(half)
MPSK_PACKED(bfloat)
MPSK_PACKED(char)
MPSK_PACKED(uchar)
MPSK_PACKED(short)
MPSK_PACKED(ushort)
MPSK_PACKED(int)
MPSK_PACKED(uint)
MPSK_PACKED(long)
MPSK_PACKED(ulong)
#undef MPSK_PACKED

// uniform<T>: a value the same in every thread (MSL 2.15). Nothing checks that here;
// it converts to and from T so kernels written with it compile and compute as in Metal.
template <class T>
struct uniform {
  T value_;
  constexpr uniform() = default;
  constexpr uniform(T v) : value_(v) {}
  constexpr operator T() const { return value_; }
};
template <class T>
constexpr uniform<T> make_uniform(T v) {
  return uniform<T>(v);
}

}  // namespace metal
