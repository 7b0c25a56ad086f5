// rms_norm and layer_norm over the last dimension: one threadgroup per row,
// fp32 accumulation, SIMD-then-threadgroup reductions (reduce.metal).
//
// Specialized by the host (ops/norm.py):
//   VEC          1 or 4: elements per load; 4 only when every row is 4-aligned
//   NREG         0 for the looped form (rows longer than one pass, read twice),
//                else the loads per thread kept in registers (row read once);
//                the two forms are separate kernel bodies below
//   ADD_RESIDUAL 1 for add_rms_norm / add_layer_norm: the row normalized is
//                h = x + residual, rounded to DTYPE as the graph rounds it, and h
//                is written too (each input read once, each output written once)
//   HAS_WEIGHT, HAS_BIAS, EPS, WEIGHT_OFFSET, DTYPE, IDX64 (common.metal)
//
// Buffers (in order): out, [h], x, [residual], [weight], [bias], then int64
// n_cols, x_row_stride, out_row_stride (h shares it), [residual_row_stride]
// (in elements). [h] and [residual] are there under ADD_RESIDUAL.

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

#if ADD_RESIDUAL
  // Loads x + residual at column c, rounds it to T (the graph's h), stores h
  // and leaves the rounded value in dst as floats.
  static inline void load_add(const device T* xr, const device T* rr, device T* hr, idx_t c, thread float* dst) {
    float a[VEC], b[VEC];
    load(xr, c, a);
    load(rr, c, b);
    for (int j = 0; j < VEC; ++j) dst[j] = float(T(a[j] + b[j]));
    store(hr, c, dst);
  }
#endif
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

#define NORM_PARAMS                                                                                        \
  device T *out, NORM_H_PARAM const device T *x,                                                           \
      NORM_RES_PARAM NORM_WEIGHT_PARAM NORM_BIAS_PARAM constant long &n_cols, constant long &x_row_stride, \
      constant long &out_row_stride, NORM_RES_STRIDE_PARAM uint row [[threadgroup_position_in_grid]],      \
      uint tid [[thread_position_in_threadgroup]], uint tg_size [[threads_per_threadgroup]],               \
      uint lane [[thread_index_in_simdgroup]], uint simd_id [[simdgroup_index_in_threadgroup]],            \
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

#if ADD_RESIDUAL
#define NORM_H_PARAM device T *h,
#define NORM_RES_PARAM const device T *res,
#define NORM_RES_STRIDE_PARAM constant long &res_row_stride,
// xr, rr: this row of x and residual; hr, y: of h and out. The first pass over the
// row reads x + residual (writing h); a later pass (the looped form) reads AGAIN,
// h, which this thread itself wrote at the same columns.
#define NORM_ROWS                                        \
  const device T* xr = x + long(row) * x_row_stride;     \
  const device T* rr = res + long(row) * res_row_stride; \
  device T* hr = h + long(row) * out_row_stride;         \
  device T* y = out + long(row) * out_row_stride;        \
  const idx_t cols = idx_t(n_cols)
#define LOAD_INPUT(c, dst) NormIO<T>::load_add(xr, rr, hr, c, dst)
#define ROW_FIRST float(T(float(xr[0]) + float(rr[0])))
#define AGAIN hr
#else
#define NORM_H_PARAM
#define NORM_RES_PARAM
#define NORM_RES_STRIDE_PARAM
#define NORM_ROWS                                    \
  const device T* xr = x + long(row) * x_row_stride; \
  device T* y = out + long(row) * out_row_stride;    \
  const idx_t cols = idx_t(n_cols)
#define LOAD_INPUT(c, dst) NormIO<T>::load(xr, c, dst)
#define ROW_FIRST float(xr[0])
#define AGAIN xr
#endif

// The fused forms are kernels of their own name (add_rms_norm_<dtype>, add_layer_norm_<dtype>).
#if ADD_RESIDUAL
#define RMS_NORM add_rms_norm
#define LAYER_NORM add_layer_norm
#else
#define RMS_NORM rms_norm
#define LAYER_NORM layer_norm
#endif

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
kernel void RMS_NORM(NORM_PARAMS) {
  threadgroup float scratch[32];
  NORM_ROWS;
  float vals[NREG * VEC];
  float acc = 0.0f;
  for (int r = 0; r < NREG; ++r) {
    const idx_t c = (idx_t(r) * tg_size + tid) * VEC;
    if (c < cols) {
      LOAD_INPUT(c, vals + r * VEC);
      for (int j = 0; j < VEC; ++j) acc += vals[r * VEC + j] * vals[r * VEC + j];
    }
  }
  const float inv_rms = rsqrt(threadgroup_sum(acc, scratch, lane, simd_id, n_simd) / float(n_cols) + EPS);
  store_row<T>(y, vals, cols, tid, tg_size, 0.0f, inv_rms, NORM_W, NORM_B);
}

template <typename T>
kernel void LAYER_NORM(NORM_PARAMS) {
  threadgroup float scratch[32];
  NORM_ROWS;
  float vals[NREG * VEC];
  // Sums are taken around the row's first element, so a large common offset
  // does not swamp the fp32 accumulator.
  const float pivot = ROW_FIRST;
  float acc = 0.0f;
  for (int r = 0; r < NREG; ++r) {
    const idx_t c = (idx_t(r) * tg_size + tid) * VEC;
    if (c < cols) {
      LOAD_INPUT(c, vals + r * VEC);
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
kernel void RMS_NORM(NORM_PARAMS) {
  threadgroup float scratch[32];
  NORM_ROWS;
  float tmp[VEC];
  float acc = 0.0f;
  for (idx_t c = idx_t(tid) * VEC; c < cols; c += idx_t(tg_size) * VEC) {
    LOAD_INPUT(c, tmp);
    for (int j = 0; j < VEC; ++j) acc += tmp[j] * tmp[j];
  }
  const float inv_rms = rsqrt(threadgroup_sum(acc, scratch, lane, simd_id, n_simd) / float(n_cols) + EPS);
  normalize_row<T>(y, AGAIN, cols, tid, tg_size, 0.0f, inv_rms, NORM_W, NORM_B);
}

template <typename T>
kernel void LAYER_NORM(NORM_PARAMS) {
  threadgroup float scratch[32];
  NORM_ROWS;
  float tmp[VEC];
  const float pivot = ROW_FIRST;  // see the register form
  float acc = 0.0f;
  for (idx_t c = idx_t(tid) * VEC; c < cols; c += idx_t(tg_size) * VEC) {
    LOAD_INPUT(c, tmp);
    for (int j = 0; j < VEC; ++j) acc += tmp[j] - pivot;
  }
  const float mean = pivot + threadgroup_sum(acc, scratch, lane, simd_id, n_simd) / float(n_cols);
  float dev = 0.0f;
  for (idx_t c = idx_t(tid) * VEC; c < cols; c += idx_t(tg_size) * VEC) {
    NormIO<T>::load(AGAIN, c, tmp);
    for (int j = 0; j < VEC; ++j) dev += (tmp[j] - mean) * (tmp[j] - mean);
  }
  const float rstd = rsqrt(threadgroup_sum(dev, scratch, lane, simd_id, n_simd) / float(n_cols) + EPS);
  normalize_row<T>(y, AGAIN, cols, tid, tg_size, mean, rstd, NORM_W, NORM_B);
}
#endif

INSTANTIATE_KERNEL(RMS_NORM)
INSTANTIATE_KERNEL(LAYER_NORM)
