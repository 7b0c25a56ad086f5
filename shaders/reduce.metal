// Threadgroup reductions shared by the row kernels (norms, softmax). The host
// concatenates this ahead of a kernel family's source; it defines no kernels.

// Sum over the threadgroup: simd_sum within each SIMD-group, then the
// SIMD-groups' partials through threadgroup memory. Every SIMD-group computes
// the total itself, so no broadcast step is needed; the trailing barrier lets
// the caller reuse `scratch` at once.
inline float threadgroup_sum(float v, threadgroup float* scratch, uint lane, uint simd_id, uint n_simd) {
  v = simd_sum(v);
  if (lane == 0) {
    scratch[simd_id] = v;
  }
  threadgroup_barrier(mem_flags::mem_threadgroup);
  float total = lane < n_simd ? scratch[lane] : 0.0f;
  total = simd_sum(total);
  threadgroup_barrier(mem_flags::mem_threadgroup);
  return total;
}

// Max over the threadgroup, in the same two steps, of finite values (common.metal:
// FINITE_MIN, not -inf, is the identity, as fast math may assume no value is infinite).
inline float threadgroup_max(float v, threadgroup float* scratch, uint lane, uint simd_id, uint n_simd) {
  v = simd_max(v);
  if (lane == 0) {
    scratch[simd_id] = v;
  }
  threadgroup_barrier(mem_flags::mem_threadgroup);
  float total = lane < n_simd ? scratch[lane] : FINITE_MIN;
  total = simd_max(total);
  threadgroup_barrier(mem_flags::mem_threadgroup);
  return total;
}
