// SIMD-group matrices: simdgroup_matrix<T, 8, 8>, its loads, stores and products.
//
// As on the GPU, a simdgroup_matrix object in one thread holds only that lane's
// two elements (thread_elements()); the matrix is the union over the 32 lanes.
// The lane layout is the one MLX's steel GEMM relies on
// (mlx/backend/metal/kernels/steel/gemm/mma.h): with q = lane / 4, lane owns
// row (q & 4) + (lane / 2) % 4, columns c and c + 1, c = (q & 2) * 2 + (lane % 2) * 2.
//
// Loads, stores and multiplies are SIMD-group collectives: every lane blocks,
// and one combine call assembles each operand from the 32 lanes' own objects,
// so a lane that edits its thread_elements() changes the matrix exactly as on
// hardware. Stricter than Metal where Metal leaves things undefined: all 32
// lanes must take part (a partial SIMD-group is an error), the pointer,
// elements_per_row, origin and transpose must be uniform across the lanes, and
// a transposed access with a nonzero origin is rejected because the meaning of
// the origin there is not documented (offset the pointer instead).
#pragma once

namespace metal {

namespace matrix_detail {

struct Coord {
  int row, col;  // the lane's first element; its second is (row, col + 1)
};
constexpr Coord owned(int lane) {
  const int q = lane / 4;
  return {(q & 4) + (lane / 2) % 4, (q & 2) * 2 + (lane % 2) * 2};
}

}  // namespace matrix_detail

template <class T, int Cols, int Rows>
struct simdgroup_matrix {
  static_assert(Cols == 8 && Rows == 8, "simdgroup_matrix: Metal supports only 8x8 matrices");
  static_assert(__is_same(T, float) || __is_same(T, half) || __is_same(T, bfloat),
                "simdgroup_matrix: the element type must be float, half or bfloat");
  vec<T, 2> mpsk_elems;  // this lane's elements; uninitialized (poisoned) unless set

  simdgroup_matrix() = default;
  // A diagonal matrix: each lane sets the elements it owns.
  explicit simdgroup_matrix(T dval) {
    const auto c = matrix_detail::owned(mpsk_rt::T->a[mpsk_rt::thread_index_in_simdgroup][0]);
    mpsk_elems[0] = c.row == c.col ? dval : T(0);
    mpsk_elems[1] = c.row == c.col + 1 ? dval : T(0);
  }
  thread vec<T, 2>& thread_elements() thread { return mpsk_elems; }
  const thread vec<T, 2>& thread_elements() const thread { return mpsk_elems; }
};

typedef simdgroup_matrix<float, 8, 8> simdgroup_float8x8;
typedef simdgroup_matrix<half, 8, 8> simdgroup_half8x8;
typedef simdgroup_matrix<bfloat, 8, 8> simdgroup_bfloat8x8;

template <class T, int Cols, int Rows = Cols>
inline simdgroup_matrix<T, Cols, Rows> make_filled_simdgroup_matrix(const T value) {
  simdgroup_matrix<T, Cols, Rows> m;
  m.mpsk_elems = value;
  return m;
}

namespace matrix_detail {

using mpsk_rt::Thread;

// Layout of a load or store, passed in Thread::in.
struct Layout {
  ulong elements_per_row, origin_x, origin_y;
  bool transpose;
};
static_assert(sizeof(Layout) <= sizeof(Thread::in));

inline Layout layout_of(const Thread* t) {
  Layout l;
  memcpy(&l, t->in, sizeof l);
  return l;
}

// Offset in memory of matrix element (r, c).
inline ulong offset(const Layout& l, int r, int c) {
  return l.transpose ? (l.origin_y + c) * l.elements_per_row + l.origin_x + r
                     : (l.origin_y + r) * l.elements_per_row + l.origin_x + c;
}

template <class M>
inline M& operand(Thread* t, int k) {
  return *static_cast<M*>(t->ptr[k]);
}

inline bool full(Thread* const* lanes, int n) {
  int first = 0;
  while (!lanes[first]) ++first;
  if (n != mpsk_rt::kSimdWidth) {
    mpsk_rt::fail("%s (line %u) in a partial SIMD-group of %d lanes in %s: simdgroup_matrix "
                  "operations need all %d lanes",
                  lanes[first]->site.what, lanes[first]->site.line, n, mpsk_rt::group_str(), mpsk_rt::kSimdWidth);
    return false;
  }
  int reached = 0, missing = -1;
  for (int i = 0; i < n; ++i) {
    reached += lanes[i] != nullptr;
    if (!lanes[i] && missing < 0) missing = i;
  }
  if (missing >= 0) {
    mpsk_rt::fail("%s (line %u) reached by %d of %d lanes of a SIMD-group in %s (lane %d did not): "
                  "simdgroup_matrix operations need every lane",
                  lanes[first]->site.what, lanes[first]->site.line, reached, n, mpsk_rt::group_str(), missing);
    return false;
  }
  return true;
}

inline bool uniform_layout(Thread* const* lanes, int n) {
  const Layout l0 = layout_of(lanes[0]);
  const char* what = lanes[0]->site.what;
  const unsigned line = lanes[0]->site.line;
  for (int i = 1; i < n; ++i) {
    const Layout li = layout_of(lanes[i]);
    const char* arg = lanes[i]->ptr[1] != lanes[0]->ptr[1]                  ? "pointer"
                      : li.elements_per_row != l0.elements_per_row          ? "elements_per_row"
                      : li.origin_x != l0.origin_x || li.origin_y != l0.origin_y ? "matrix_origin"
                      : li.transpose != l0.transpose                         ? "transpose_matrix"
                                                                             : nullptr;
    if (arg) {
      mpsk_rt::fail("%s (line %u): the %s must be uniform across the SIMD-group, but lane %d "
                    "passed a different one than lane 0",
                    what, line, arg, i);
      return false;
    }
  }
  if (l0.transpose && (l0.origin_x || l0.origin_y)) {
    mpsk_rt::fail("%s (line %u): transpose_matrix with a nonzero matrix_origin (%lu, %lu) is not "
                  "supported by the emulator, as Metal does not document which layout the origin "
                  "then refers to; offset the pointer instead",
                  what, line, l0.origin_x, l0.origin_y);
    return false;
  }
  return true;
}

template <class T, class M>
void load(Thread* const* lanes, int n) {
  if (!full(lanes, n) || !uniform_layout(lanes, n)) return;
  const Layout l = layout_of(lanes[0]);
  const T* src = static_cast<const T*>(lanes[0]->ptr[1]);
  for (int i = 0; i < n; ++i) {
    const Coord c = owned(i);
    for (int j = 0; j < 2; ++j) operand<M>(lanes[i], 0).mpsk_elems[j] = src[offset(l, c.row, c.col + j)];
  }
}

template <class T, class M>
void store(Thread* const* lanes, int n) {
  if (!full(lanes, n) || !uniform_layout(lanes, n)) return;
  const Layout l = layout_of(lanes[0]);
  T* dst = static_cast<T*>(lanes[0]->ptr[1]);
  for (int i = 0; i < n; ++i) {
    const Coord c = owned(i);
    for (int j = 0; j < 2; ++j) dst[offset(l, c.row, c.col + j)] = operand<const M>(lanes[i], 0).mpsk_elems[j];
  }
}

// The 8x8 value of operand k, assembled from every lane's own elements.
template <class M>
void gather(Thread* const* lanes, int k, float (&m)[8][8]) {
  for (int i = 0; i < mpsk_rt::kSimdWidth; ++i) {
    const Coord c = owned(i);
    for (int j = 0; j < 2; ++j) m[c.row][c.col + j] = float(operand<const M>(lanes[i], k).mpsk_elems[j]);
  }
}

// d = a * b (+ c), accumulated in float and rounded once to d's type. All
// operands are read before d is written, so d may alias any of them.
template <class D, class A, class B, class C>
void multiply(Thread* const* lanes, int n) {
  if (!full(lanes, n)) return;
  float a[8][8], b[8][8], c[8][8] = {};
  gather<A>(lanes, 1, a);
  gather<B>(lanes, 2, b);
  if constexpr (!__is_same(C, void)) gather<C>(lanes, 3, c);
  using E = typename vinfo<decltype(D::mpsk_elems)>::elem;
  for (int i = 0; i < n; ++i) {
    const Coord o = owned(i);
    for (int j = 0; j < 2; ++j) {
      float acc = 0.0f;
      for (int k = 0; k < 8; ++k) acc += a[o.row][k] * b[k][o.col + j];
      operand<D>(lanes[i], 0).mpsk_elems[j] = E(acc + c[o.row][o.col + j]);
    }
  }
}

inline void collective(const void* m0, const void* m1, const void* m2, const void* m3, const Layout* l,
                       mpsk_rt::CombineFn fn, const mpsk_rt::Site& site) {
  Thread* t = mpsk_rt::T;
  t->ptr[0] = const_cast<void*>(m0);
  t->ptr[1] = const_cast<void*>(m1);
  t->ptr[2] = const_cast<void*>(m2);
  t->ptr[3] = const_cast<void*>(m3);
  if (l) memcpy(t->in, l, sizeof *l);
  mpsk_rt::block(mpsk_rt::Sync::Simd, site, fn);
}

}  // namespace matrix_detail

#define MPSK_MATRIX_LOAD_STORE(AS)                                                                 \
  template <class T, int Cols, int Rows>                                                         \
  inline void simdgroup_load(thread simdgroup_matrix<T, Cols, Rows>& d, const AS T* src,         \
                             ulong elements_per_row = Cols, ulong2 matrix_origin = ulong2(0),    \
                             bool transpose_matrix = false, MPSK_SITE_PARAMS) {                  \
    const matrix_detail::Layout l{elements_per_row, matrix_origin.x, matrix_origin.y, transpose_matrix}; \
    matrix_detail::collective(&d, (const void*)src, nullptr, nullptr, &l,                        \
                              matrix_detail::load<T, simdgroup_matrix<T, Cols, Rows>>,           \
                              MPSK_SITE("simdgroup_load"));                                      \
  }                                                                                              \
  template <class T, int Cols, int Rows>                                                         \
  inline void simdgroup_store(const thread simdgroup_matrix<T, Cols, Rows>& a, AS T* dst,        \
                              ulong elements_per_row = Cols, ulong2 matrix_origin = ulong2(0),   \
                              bool transpose_matrix = false, MPSK_SITE_PARAMS) {                 \
    const matrix_detail::Layout l{elements_per_row, matrix_origin.x, matrix_origin.y, transpose_matrix}; \
    matrix_detail::collective(&a, (const void*)dst, nullptr, nullptr, &l,                        \
                              matrix_detail::store<T, simdgroup_matrix<T, Cols, Rows>>,          \
                              MPSK_SITE("simdgroup_store"));                                     \
  }
// Metal has device and threadgroup forms only: a constant pointer does not compile.
MPSK_MATRIX_LOAD_STORE(device)
#ifndef MPSK_GENERIC_SPACES  // there the two spaces are one
MPSK_MATRIX_LOAD_STORE(threadgroup)
#endif
#undef MPSK_MATRIX_LOAD_STORE

// Operand types may differ (MLX multiplies half or bfloat into float accumulators).
template <class TD, class TA, class TB, class TC>
inline void simdgroup_multiply_accumulate(thread simdgroup_matrix<TD, 8, 8>& d,
                                          const thread simdgroup_matrix<TA, 8, 8>& a,
                                          const thread simdgroup_matrix<TB, 8, 8>& b,
                                          const thread simdgroup_matrix<TC, 8, 8>& c, MPSK_SITE_PARAMS) {
  matrix_detail::collective(&d, &a, &b, &c, nullptr,
                            matrix_detail::multiply<simdgroup_matrix<TD, 8, 8>, simdgroup_matrix<TA, 8, 8>,
                                                    simdgroup_matrix<TB, 8, 8>, simdgroup_matrix<TC, 8, 8>>,
                            MPSK_SITE("simdgroup_multiply_accumulate"));
}

// a * b and a + b on simdgroup matrices (MLX's conv writes `(G * g) * Gt`). An operator takes no
// call-site arguments, so all its uses count as one site for the divergence checks.
template <class T>
inline simdgroup_matrix<T, 8, 8> operator*(const thread simdgroup_matrix<T, 8, 8>& a,
                                           const thread simdgroup_matrix<T, 8, 8>& b);
template <class T>
inline simdgroup_matrix<T, 8, 8> operator+(const thread simdgroup_matrix<T, 8, 8>& a,
                                           const thread simdgroup_matrix<T, 8, 8>& b) {
  simdgroup_matrix<T, 8, 8> d;
  d.mpsk_elems = a.mpsk_elems + b.mpsk_elems;  // each lane owns the same elements of all three
  return d;
}

template <class TD, class TA, class TB>
inline void simdgroup_multiply(thread simdgroup_matrix<TD, 8, 8>& d, const thread simdgroup_matrix<TA, 8, 8>& a,
                               const thread simdgroup_matrix<TB, 8, 8>& b, MPSK_SITE_PARAMS) {
  matrix_detail::collective(&d, &a, &b, nullptr, nullptr,
                            matrix_detail::multiply<simdgroup_matrix<TD, 8, 8>, simdgroup_matrix<TA, 8, 8>,
                                                    simdgroup_matrix<TB, 8, 8>, void>,
                            MPSK_SITE("simdgroup_multiply"));
}

template <class T>
inline simdgroup_matrix<T, 8, 8> operator*(const thread simdgroup_matrix<T, 8, 8>& a,
                                           const thread simdgroup_matrix<T, 8, 8>& b) {
  simdgroup_matrix<T, 8, 8> d;
  simdgroup_multiply(d, a, b, "<simdgroup_matrix operator*>", 0, 0);
  return d;
}

}  // namespace metal
