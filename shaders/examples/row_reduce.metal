// A sample kernel (the demo's first check, the runtime tests and the emulator benchmark
// use it), written as a user would write one: plain Metal, no mpsk helpers.
// Row reductions: one threadgroup per row, per-thread partial sums, simd_sum,
// then the SIMD-groups' partials combined through threadgroup memory.
#include <metal_stdlib>
using namespace metal;

template <typename T>
kernel void row_sum_squares(device float* out [[buffer(0)]], constant T* x [[buffer(1)]],
                            constant long& cols [[buffer(2)]], uint row [[threadgroup_position_in_grid]],
                            uint tid [[thread_position_in_threadgroup]], uint tg_size [[threads_per_threadgroup]],
                            uint lane [[thread_index_in_simdgroup]], uint simd_id [[simdgroup_index_in_threadgroup]],
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

template [[host_name("row_sum_squares_float")]] [[kernel]] void row_sum_squares<float>(device float*, constant float*,
                                                                                       constant long&, uint, uint, uint,
                                                                                       uint, uint, uint);
template [[host_name("row_sum_squares_half")]] [[kernel]] void row_sum_squares<half>(device float*, constant half*,
                                                                                     constant long&, uint, uint, uint,
                                                                                     uint, uint, uint);
template [[host_name("row_sum_squares_bfloat")]] [[kernel]] decltype(row_sum_squares<bfloat>) row_sum_squares<bfloat>;
