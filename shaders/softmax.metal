// softmax and log_softmax over one dimension: one threadgroup per row, fp32
// accumulation, max-subtracted so large magnitudes neither overflow nor lose
// the small terms. Reductions from reduce.metal.
//
// A tensor is seen as (outer, n_cols, inner) with element strides; row r of
// the launch is (r / inner, r % inner), so softmax over a middle or leading
// dimension reads the input in place instead of moving the dimension last.
//
// Specialized by the host (ops/softmax.py):
//   VEC   1 or 4: elements per load; 4 only when every row is contiguous and
//         4-aligned (then the column strides are 1 and are not read)
//   NREG  0 for the online form (long rows: running max and rescaled sum in
//         one read, then a second read to write), else the loads per thread
//         kept in registers (row read once); two kernel bodies below
//   LOG   0 for softmax, 1 for log_softmax
//   DTYPE, IDX64 (common.metal)
//
// Buffers (in order): out, x, then int64 n_cols, inner, x_outer_stride,
// x_col_stride, x_inner_stride, out_outer_stride, out_col_stride,
// out_inner_stride (in elements).
//
// Rows whose max is infinite (all -inf, or holding +inf or NaN) give NaN, as
// ATen does; a -inf element gives 0 (softmax) or -inf (log_softmax). Every
// value is kept finite (common.metal): -inf is loaded as FINITE_MIN and +inf or
// NaN as FINITE_MAX, so the kernel is right with fast math too, which assumes
// no Inf or NaN.

template <typename T>
struct SoftmaxIO {
  // VEC elements from column c, each finite_or_sentinel.
  static inline void load(const device T* row, idx_t c, idx_t stride, thread float* dst) {
#if VEC == 4
    const vec<T, 4> v = *(const device vec<T, 4>*)(row + c);
    for (int j = 0; j < 4; ++j) {
      const T raw = v[j];
      dst[j] = finite_or_sentinel(raw);
    }
#else
    const T raw = row[c * stride];
    dst[0] = finite_or_sentinel(raw);
#endif
  }

  // VEC results from column c, each written as the bits of its class (common.metal).
  static inline void store(device T* row, idx_t c, idx_t stride, thread const float* src,
                           thread const FloatClass* cls) {
    typedef typename FloatBits<T>::bits B;
#if VEC == 4
    vec<B, 4> v;
    for (int j = 0; j < 4; ++j) v[j] = FloatBits<T>::store_bits(src[j], cls[j]);
    *(device vec<B, 4>*)(row + c) = v;
#else
    *(device B*)(row + c * stride) = FloatBits<T>::store_bits(src[0], cls[0]);
#endif
  }
};

// exp(v - m) for a loaded value v, exactly 0 for a -inf element.
inline float exp_shift(float v, float m) {
  return v == FINITE_MIN ? 0.0f : exp(v - m);
}

// The row's statistics once m (max) and s (sum of exp(v - m)) are reduced.
struct RowStats {
  float m, inv_sum, log_sum;
  bool nan_row;  // the row's max was infinite (all -inf, or +inf or NaN somewhere): NaN everywhere

  RowStats(float m_, float s) : m(m_) {
    nan_row = m == FINITE_MIN || m == FINITE_MAX;
    const float s_safe = nan_row ? 1.0f : s;  // s is 0 for an all -inf row: no inf from 1 / s or log(s)
    inv_sum = 1.0f / s_safe;
    log_sum = log(s_safe);
  }

  // The output for loaded value v, or for softmax in registers e = exp(v - m) already
  // taken, and its class. log: (v - m) - log(sum), subtracted in that order so m + log(sum)
  // never rounds away the small difference when |m| is large.
  float finish(float v, bool v_is_exp, thread FloatClass& cls) const {
#if LOG
    cls = nan_row ? FloatClass::pos_inf_or_nan : v == FINITE_MIN ? FloatClass::neg_inf : FloatClass::finite;
    return (v - m) - log_sum;
#else
    cls = nan_row ? FloatClass::pos_inf_or_nan : FloatClass::finite;
    return (v_is_exp ? v : exp_shift(v, m)) * inv_sum;
#endif
  }
};

#define SOFTMAX_PARAMS                                                                                           \
  device T *out, const device T *x, constant long &n_cols, constant long &inner, constant long &x_outer_stride,  \
      constant long &x_col_stride, constant long &x_inner_stride, constant long &out_outer_stride,               \
      constant long &out_col_stride, constant long &out_inner_stride, uint row [[threadgroup_position_in_grid]], \
      uint tid [[thread_position_in_threadgroup]], uint tg_size [[threads_per_threadgroup]],                     \
      uint lane [[thread_index_in_simdgroup]], uint simd_id [[simdgroup_index_in_threadgroup]],                  \
      uint n_simd [[simdgroups_per_threadgroup]]

// Row `row` of the launch is (o, i) of the (outer, cols, inner) view.
#define SOFTMAX_ROWS                                                            \
  const uint o = row / uint(inner);                                             \
  const uint i = row - o * uint(inner);                                         \
  const device T* xr = x + long(o) * x_outer_stride + long(i) * x_inner_stride; \
  device T* yr = out + long(o) * out_outer_stride + long(i) * out_inner_stride; \
  const idx_t cols = idx_t(n_cols), x_cs = idx_t(x_col_stride), out_cs = idx_t(out_col_stride)

#if NREG > 0
// Register form: each thread loads its NREG * VEC elements once (loop r covers columns
// (r * tg_size + tid) * VEC onwards) and keeps them, then exp(v - m) in their place.
template <typename T>
kernel void softmax(SOFTMAX_PARAMS) {
  threadgroup float scratch[32];
  SOFTMAX_ROWS;
  float vals[NREG * VEC];
  float m = FINITE_MIN;
  for (int r = 0; r < NREG; ++r) {
    const idx_t c = (idx_t(r) * tg_size + tid) * VEC;
    if (c < cols) {
      SoftmaxIO<T>::load(xr, c, x_cs, vals + r * VEC);
      for (int j = 0; j < VEC; ++j) m = max(m, vals[r * VEC + j]);
    }
  }
  m = threadgroup_max(m, scratch, lane, simd_id, n_simd);
  float s = 0.0f;
  for (int r = 0; r < NREG; ++r) {
    if ((idx_t(r) * tg_size + tid) * VEC < cols) {
      for (int j = 0; j < VEC; ++j) {
        const float e = exp_shift(vals[r * VEC + j], m);
        s += e;
#if !LOG
        vals[r * VEC + j] = e;
#endif
      }
    }
  }
  const RowStats st(m, threadgroup_sum(s, scratch, lane, simd_id, n_simd));
  float tmp[VEC];
  FloatClass cls[VEC];
  for (int r = 0; r < NREG; ++r) {
    const idx_t c = (idx_t(r) * tg_size + tid) * VEC;
    if (c < cols) {
      for (int j = 0; j < VEC; ++j) tmp[j] = st.finish(vals[r * VEC + j], true, cls[j]);
      SoftmaxIO<T>::store(yr, c, out_cs, tmp, cls);
    }
  }
}

#else
// Online form, for long rows: one read keeps each thread's running max m and its sum s of
// exp(v - m), rescaled whenever m grows (no rescaling while m is still FINITE_MIN: s is 0
// then); the threads' pairs are merged, and a second read writes the output.
template <typename T>
kernel void softmax(SOFTMAX_PARAMS) {
  threadgroup float scratch[32];
  SOFTMAX_ROWS;
  float tmp[VEC];
  float m = FINITE_MIN;
  float s = 0.0f;
  for (idx_t c = idx_t(tid) * VEC; c < cols; c += idx_t(tg_size) * VEC) {
    SoftmaxIO<T>::load(xr, c, x_cs, tmp);
    for (int j = 0; j < VEC; ++j) {
      const float v = tmp[j];
      if (v > m) {
        s = s * exp_shift(m, v) + 1.0f;
        m = v;
      } else {
        s += exp_shift(v, m);
      }
    }
  }
  const float m_row = threadgroup_max(m, scratch, lane, simd_id, n_simd);
  s *= exp_shift(m, m_row);
  const RowStats st(m_row, threadgroup_sum(s, scratch, lane, simd_id, n_simd));
  FloatClass cls[VEC];
  for (idx_t c = idx_t(tid) * VEC; c < cols; c += idx_t(tg_size) * VEC) {
    SoftmaxIO<T>::load(xr, c, x_cs, tmp);
    for (int j = 0; j < VEC; ++j) tmp[j] = st.finish(tmp[j], false, cls[j]);
    SoftmaxIO<T>::store(yr, c, out_cs, tmp, cls);
  }
}
#endif

INSTANTIATE_KERNEL(softmax)
