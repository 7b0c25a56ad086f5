// Row reductions: one threadgroup per row, per-thread partial sums, simd_sum,
// then the SIMD-groups' partials combined through threadgroup memory.

template <typename T>
kernel void row_sum_squares(
    device float* out [[buffer(0)]],
    constant T* x [[buffer(1)]],
    constant long& cols [[buffer(2)]],
    uint row [[threadgroup_position_in_grid]],
    uint tid [[thread_position_in_threadgroup]],
    uint tg_size [[threads_per_threadgroup]],
    uint lane [[thread_index_in_simdgroup]],
    uint simd_id [[simdgroup_index_in_threadgroup]],
    uint simd_count [[simdgroups_per_threadgroup]]) {
  threadgroup float partial[32];
  constant T* row_x = x + row * cols;
  float acc = 0.0;
  for (long i = tid; i < cols; i += tg_size) {
    const float v = float(row_x[i]);
    acc += v * v;
  }
  acc = simd_sum(acc);
  if (lane == 0) {
    partial[simd_id] = acc;
  }
  threadgroup_barrier(mem_flags::mem_threadgroup);
  if (simd_id == 0) {
    float total = lane < simd_count ? partial[lane] : 0.0;
    total = simd_sum(total);
    if (lane == 0) {
      out[row] = total;
    }
  }
}

INSTANTIATE_KERNEL(row_sum_squares)
