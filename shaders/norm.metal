// rms_norm and layer_norm over the last dimension: one threadgroup per row,
// fp32 accumulation, SIMD-then-threadgroup reductions (reduce.metal).
//
// Specialized by the host (ops/norm.py):
//   VEC          1 or 4: elements per load; 4 only when every row is 4-aligned
//   NREG         0 for the looped form (rows longer than one pass, read twice),
//                else the loads per thread kept in registers (row read once);
//                the two forms are separate kernel bodies below
//   HAS_WEIGHT, HAS_BIAS, EPS, WEIGHT_OFFSET, DTYPE, IDX64 (common.metal)
//
// Buffers (in order): out, x, [weight], [bias], then int64 n_cols,
// x_row_stride, out_row_stride (in elements).

template <typename T>
struct NormIO {
  // Loads VEC elements starting at column c of a row as floats.
  static inline void load(const device T* row, idx_t c, thread float* dst) {
#if VEC == 4
    const float4 v = float4(*(const device vec<T, 4>*)(row + c));
    dst[0] = v.x;
    dst[1] = v.y;
    dst[2] = v.z;
    dst[3] = v.w;
#else
    dst[0] = float(row[c]);
#endif
  }

  static inline void store(device T* row, idx_t c, thread const float* src) {
#if VEC == 4
    *(device vec<T, 4>*)(row + c) = vec<T, 4>(float4(src[0], src[1], src[2], src[3]));
#else
    row[c] = T(src[0]);
#endif
  }
};

// Scale and shift applied to normalized column c + j.
template <typename T>
inline float affine(float y, idx_t col, const device T* w, const device T* b) {
#if HAS_WEIGHT
  y *= float(w[col]) + WEIGHT_OFFSET;
#endif
#if HAS_BIAS
  y += float(b[col]);
#endif
  return y;
}

#define NORM_PARAMS                                                                                          \
  device T *out, const device T *x, NORM_WEIGHT_PARAM NORM_BIAS_PARAM constant long &n_cols,                 \
      constant long &x_row_stride, constant long &out_row_stride, uint row [[threadgroup_position_in_grid]], \
      uint tid [[thread_position_in_threadgroup]], uint tg_size [[threads_per_threadgroup]],                 \
      uint lane [[thread_index_in_simdgroup]], uint simd_id [[simdgroup_index_in_threadgroup]],              \
      uint n_simd [[simdgroups_per_threadgroup]]

#if HAS_WEIGHT
#define NORM_WEIGHT_PARAM const device T *w,
#define NORM_W w
#else
#define NORM_WEIGHT_PARAM
#define NORM_W nullptr
#endif
#if HAS_BIAS
#define NORM_BIAS_PARAM const device T *b,
#define NORM_B b
#else
#define NORM_BIAS_PARAM
#define NORM_B nullptr
#endif

#define NORM_ROWS                                    \
  const device T* xr = x + long(row) * x_row_stride; \
  device T* y = out + long(row) * out_row_stride;    \
  const idx_t cols = idx_t(n_cols)

#if NREG > 0
// Register form: each thread loads its NREG * VEC elements of the row once and keeps them.
// Loop r covers columns (r * tg_size + tid) * VEC onwards; a load past the row is skipped.

// Writes affine((vals - center) * scale) for the thread's columns.
template <typename T>
inline void store_row(device T* y, thread const float* vals, idx_t cols, uint tid, uint tg_size, float center,
                      float scale, const device T* w, const device T* b) {
  float tmp[VEC];
  for (int r = 0; r < NREG; ++r) {
    const idx_t c = (idx_t(r) * tg_size + tid) * VEC;
    if (c < cols) {
      for (int j = 0; j < VEC; ++j) tmp[j] = affine<T>((vals[r * VEC + j] - center) * scale, c + j, w, b);
      NormIO<T>::store(y, c, tmp);
    }
  }
}

template <typename T>
kernel void rms_norm(NORM_PARAMS) {
  threadgroup float scratch[32];
  NORM_ROWS;
  float vals[NREG * VEC];
  float acc = 0.0f;
  for (int r = 0; r < NREG; ++r) {
    const idx_t c = (idx_t(r) * tg_size + tid) * VEC;
    if (c < cols) {
      NormIO<T>::load(xr, c, vals + r * VEC);
      for (int j = 0; j < VEC; ++j) acc += vals[r * VEC + j] * vals[r * VEC + j];
    }
  }
  const float inv_rms = rsqrt(threadgroup_sum(acc, scratch, lane, simd_id, n_simd) / float(n_cols) + EPS);
  store_row<T>(y, vals, cols, tid, tg_size, 0.0f, inv_rms, NORM_W, NORM_B);
}

template <typename T>
kernel void layer_norm(NORM_PARAMS) {
  threadgroup float scratch[32];
  NORM_ROWS;
  float vals[NREG * VEC];
  // Sums are taken around the row's first element, so a large common offset
  // does not swamp the fp32 accumulator.
  const float pivot = float(xr[0]);
  float acc = 0.0f;
  for (int r = 0; r < NREG; ++r) {
    const idx_t c = (idx_t(r) * tg_size + tid) * VEC;
    if (c < cols) {
      NormIO<T>::load(xr, c, vals + r * VEC);
      for (int j = 0; j < VEC; ++j) acc += vals[r * VEC + j] - pivot;
    }
  }
  const float mean = pivot + threadgroup_sum(acc, scratch, lane, simd_id, n_simd) / float(n_cols);
  // Variance from deviations (a second pass over the registers), stable where E[x^2] - mean^2 is not.
  float dev = 0.0f;
  for (int r = 0; r < NREG; ++r) {
    if ((idx_t(r) * tg_size + tid) * VEC < cols) {
      for (int j = 0; j < VEC; ++j) dev += (vals[r * VEC + j] - mean) * (vals[r * VEC + j] - mean);
    }
  }
  const float rstd = rsqrt(threadgroup_sum(dev, scratch, lane, simd_id, n_simd) / float(n_cols) + EPS);
  store_row<T>(y, vals, cols, tid, tg_size, mean, rstd, NORM_W, NORM_B);
}

#else
// Looped form, for rows longer than a few passes of the threadgroup: every statistic is a
// strided loop over the row in device memory, and the output is written by reading it again.

// Writes affine((x - center) * scale) for the thread's columns, re-reading x.
template <typename T>
inline void normalize_row(device T* y, const device T* xr, idx_t cols, uint tid, uint tg_size, float center,
                          float scale, const device T* w, const device T* b) {
  float tmp[VEC];
  for (idx_t c = idx_t(tid) * VEC; c < cols; c += idx_t(tg_size) * VEC) {
    NormIO<T>::load(xr, c, tmp);
    for (int j = 0; j < VEC; ++j) tmp[j] = affine<T>((tmp[j] - center) * scale, c + j, w, b);
    NormIO<T>::store(y, c, tmp);
  }
}

template <typename T>
kernel void rms_norm(NORM_PARAMS) {
  threadgroup float scratch[32];
  NORM_ROWS;
  float tmp[VEC];
  float acc = 0.0f;
  for (idx_t c = idx_t(tid) * VEC; c < cols; c += idx_t(tg_size) * VEC) {
    NormIO<T>::load(xr, c, tmp);
    for (int j = 0; j < VEC; ++j) acc += tmp[j] * tmp[j];
  }
  const float inv_rms = rsqrt(threadgroup_sum(acc, scratch, lane, simd_id, n_simd) / float(n_cols) + EPS);
  normalize_row<T>(y, xr, cols, tid, tg_size, 0.0f, inv_rms, NORM_W, NORM_B);
}

template <typename T>
kernel void layer_norm(NORM_PARAMS) {
  threadgroup float scratch[32];
  NORM_ROWS;
  float tmp[VEC];
  const float pivot = float(xr[0]);  // see the register form
  float acc = 0.0f;
  for (idx_t c = idx_t(tid) * VEC; c < cols; c += idx_t(tg_size) * VEC) {
    NormIO<T>::load(xr, c, tmp);
    for (int j = 0; j < VEC; ++j) acc += tmp[j] - pivot;
  }
  const float mean = pivot + threadgroup_sum(acc, scratch, lane, simd_id, n_simd) / float(n_cols);
  float dev = 0.0f;
  for (idx_t c = idx_t(tid) * VEC; c < cols; c += idx_t(tg_size) * VEC) {
    NormIO<T>::load(xr, c, tmp);
    for (int j = 0; j < VEC; ++j) dev += (tmp[j] - mean) * (tmp[j] - mean);
  }
  const float rstd = rsqrt(threadgroup_sum(dev, scratch, lane, simd_id, n_simd) / float(n_cols) + EPS);
  normalize_row<T>(y, xr, cols, tid, tg_size, mean, rstd, NORM_W, NORM_B);
}
#endif

INSTANTIATE_KERNEL(rms_norm)
INSTANTIATE_KERNEL(layer_norm)
