// <metal_matrix>: floatCxR, halfCxR and bfloatCxR (C columns of R-component vectors, 2 <= C, R <= 4).
//
// Columns are Metal's vector types, so sizes and alignments match Metal's (a float3
// column takes 16 bytes). m[c] is a column; m * v takes a C-vector to an R-vector and
// v * m an R-vector to a C-vector, as in the MSL specification (2.3).
#pragma once

namespace metal {

template <class T, int C, int R>
struct matrix {
  static_assert(2 <= C && C <= 4 && 2 <= R && R <= 4, "Metal matrices have 2 to 4 columns and rows");
  static_assert(__is_same(T, float) || __is_same(T, half) || __is_same(T, bfloat),
                "Metal matrices hold float, half or bfloat");
  using column = vec<T, R>;
  column columns[C];

  constexpr matrix() : columns{} {}
  // A diagonal matrix (MSL: floatNxM(d) sets the diagonal, zero elsewhere).
  explicit constexpr matrix(T d) : columns{} {
    for (int c = 0; c < C && c < R; ++c) columns[c][c] = d;
  }
  template <class... Cols>
    requires(sizeof...(Cols) == C && (__is_same(__remove_cvref(Cols), column) && ...))
  constexpr matrix(Cols... cols) : columns{cols...} {}
  template <class... S>
    requires(sizeof...(S) == C * R && C * R > 4 && (__is_arithmetic(__remove_cvref(S)) && ...))
  constexpr matrix(S... s) : columns{} {
    const T v[] = {static_cast<T>(s)...};
    for (int c = 0; c < C; ++c)
      for (int r = 0; r < R; ++r) columns[c][r] = v[c * R + r];
  }
  template <class U>
  explicit constexpr matrix(const matrix<U, C, R>& m) : columns{} {
    for (int c = 0; c < C; ++c)
      for (int r = 0; r < R; ++r) columns[c][r] = static_cast<T>(static_cast<float>(m.columns[c][r]));
  }

  constexpr thread column& operator[](int c) { return columns[check(c)]; }
  constexpr const thread column& operator[](int c) const { return columns[check(c)]; }

 private:
  static constexpr int check(int c) {
    if (!__builtin_is_constant_evaluated() && (c < 0 || c >= C))
      mpsk_rt::trap("matrix column %d out of range for a matrix of %d columns", c, C);
    return c;
  }
};

template <class T, int C, int R>
constexpr matrix<T, C, R> operator+(const matrix<T, C, R>& a, const matrix<T, C, R>& b) {
  matrix<T, C, R> m;
  for (int c = 0; c < C; ++c) m.columns[c] = a.columns[c] + b.columns[c];
  return m;
}
template <class T, int C, int R>
constexpr matrix<T, C, R> operator-(const matrix<T, C, R>& a, const matrix<T, C, R>& b) {
  matrix<T, C, R> m;
  for (int c = 0; c < C; ++c) m.columns[c] = a.columns[c] - b.columns[c];
  return m;
}
template <class T, int C, int R>
constexpr matrix<T, C, R> operator*(const matrix<T, C, R>& a, T s) {
  matrix<T, C, R> m;
  for (int c = 0; c < C; ++c) m.columns[c] = a.columns[c] * s;
  return m;
}
template <class T, int C, int R>
constexpr matrix<T, C, R> operator*(T s, const matrix<T, C, R>& a) {
  return a * s;
}
template <class T, int C, int R>
constexpr matrix<T, C, R> operator/(const matrix<T, C, R>& a, T s) {
  matrix<T, C, R> m;
  for (int c = 0; c < C; ++c) m.columns[c] = a.columns[c] / s;
  return m;
}
template <class T, int C, int R>
constexpr matrix<T, C, R>& operator+=(thread matrix<T, C, R>& a, const matrix<T, C, R>& b) {
  return a = a + b;
}
template <class T, int C, int R>
constexpr matrix<T, C, R>& operator-=(thread matrix<T, C, R>& a, const matrix<T, C, R>& b) {
  return a = a - b;
}
template <class T, int C, int R>
constexpr matrix<T, C, R>& operator*=(thread matrix<T, C, R>& a, T s) {
  return a = a * s;
}
template <class T, int C, int R>
constexpr vec<T, R> operator*(const matrix<T, C, R>& m, vec<T, C> v) {
  vec<T, R> r = T(0);
  for (int c = 0; c < C; ++c) r += m.columns[c] * v[c];
  return r;
}
template <class T, int C, int R>
constexpr vec<T, C> operator*(vec<T, R> v, const matrix<T, C, R>& m) {
  vec<T, C> r;
  for (int c = 0; c < C; ++c) {
    T acc = T(0);
    for (int k = 0; k < R; ++k) acc += v[k] * m.columns[c][k];
    r[c] = acc;
  }
  return r;
}
template <class T, int K, int R, int C>
constexpr matrix<T, C, R> operator*(const matrix<T, K, R>& a, const matrix<T, C, K>& b) {
  matrix<T, C, R> m;
  for (int c = 0; c < C; ++c) m.columns[c] = a * b.columns[c];
  return m;
}

template <class T, int C, int R>
constexpr matrix<T, R, C> transpose(const matrix<T, C, R>& a) {
  matrix<T, R, C> m;
  for (int c = 0; c < C; ++c)
    for (int r = 0; r < R; ++r) m.columns[r][c] = a.columns[c][r];
  return m;
}

template <class T>
constexpr T determinant(const matrix<T, 2, 2>& m) {
  return m.columns[0][0] * m.columns[1][1] - m.columns[1][0] * m.columns[0][1];
}
template <class T>
constexpr T determinant(const matrix<T, 3, 3>& m) {
  const auto& a = m.columns;
  return a[0][0] * (a[1][1] * a[2][2] - a[2][1] * a[1][2]) - a[1][0] * (a[0][1] * a[2][2] - a[2][1] * a[0][2]) +
         a[2][0] * (a[0][1] * a[1][2] - a[1][1] * a[0][2]);
}

#define MPSK_MATRICES(T)                   \
  typedef matrix<T, 2, 2> T##2x2;          \
  typedef matrix<T, 2, 3> T##2x3;          \
  typedef matrix<T, 2, 4> T##2x4;          \
  typedef matrix<T, 3, 2> T##3x2;          \
  typedef matrix<T, 3, 3> T##3x3;          \
  typedef matrix<T, 3, 4> T##3x4;          \
  typedef matrix<T, 4, 2> T##4x2;          \
  typedef matrix<T, 4, 3> T##4x3;          \
  typedef matrix<T, 4, 4> T##4x4;
MPSK_MATRICES(float)
MPSK_MATRICES(half)
MPSK_MATRICES(bfloat)
#undef MPSK_MATRICES

}  // namespace metal
