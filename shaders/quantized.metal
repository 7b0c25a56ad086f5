// Linear layers with low-bit weights: out = x @ W^T (+ bias), W dequantized on the fly.
//
// W (N, K) is stored as in mps_inductor_ext/quantization.py: row n is K * BITS / 32 uint32
// words, word i holding values q[i * 32/BITS + j] at bits [BITS * j, BITS * (j + 1)); every
// GROUP_SIZE consecutive values of a row share one scale and one bias:
//     W[n, k] = scales[n, k / GROUP_SIZE] * q[n, k] + biases[n, k / GROUP_SIZE].
//
// quantized_matvec: few rows of x (decode). A SIMD-group owns OUTS consecutive outputs of a block
// of ROWS rows of x; its lanes walk K in steps of STEP = 8 values (one word of 4-bit values, two
// of 8-bit), lane l taking values [8 l, 8 l + 8) of every 256. Each packed word is read once,
// unpacked in registers and used for every row of the block; the scale and bias are factored
// out of the step, which lies inside one group (8 divides GROUP_SIZE):
//     sum_j x_j (s q_j + b) = s * sum_j x_j q_j + b * sum_j x_j.
// fp32 accumulation; one simd_sum per (row, output) at the end. More rows than ROWS take more
// blocks (the grid's second dimension), each reading W again.
//
// quantized_matmul: many rows (prefill). A threadgroup of four SIMD-groups computes a 32 x 32
// tile of out: for each 32-wide slice of K (inside one group, since 32 divides GROUP_SIZE) its
// 128 threads stage the x tile and the dequantized W tile in threadgroup memory as float, eight
// values each (one word of 4-bit values, two of 8-bit), then each SIMD-group multiplies its
// 16 x 16 quadrant as 2 x 2 simdgroup_matrix 8 x 8 products, accumulated in float. Each packed
// word is read once per 32 rows of x. Tiles past M or N are zero-filled and not written.
//
// Specialized by the host (ops/quantized.py): BITS (4 or 8), GROUP_SIZE (32, 64 or 128),
// ROWS (1 to 8) and OUTS (outputs per SIMD-group) for the matvec, HAS_BIAS.
//
// Both kernels take the same buffers (in order): out (M, N) contiguous, x (M, K) read through its strides, w (N,
// K*BITS/32) uint, scales (N, K/GROUP_SIZE), biases (N, K/GROUP_SIZE), [bias (N)], then int64 m_rows, n_out, k_in,
// x_row_stride, x_col_stride (in elements).
#include <metal_stdlib>
#include <metal_simdgroup_matrix>
using namespace metal;

#define VALUES_PER_WORD (32 / BITS)
#define STEP 8
#define WORDS_PER_STEP (STEP / VALUES_PER_WORD)
#define LEVEL_MASK ((1u << BITS) - 1u)

#if HAS_BIAS
#define QMV_BIAS_PARAM const device T *bias,
#else
#define QMV_BIAS_PARAM
#endif

template <typename T>
kernel void quantized_matvec(device T* out, const device T* x, const device uint* w, const device T* scales,
                             const device T* biases, QMV_BIAS_PARAM constant long& m_rows, constant long& n_out,
                             constant long& k_in, constant long& x_row_stride, constant long& x_col_stride,
                             uint2 group_pos [[threadgroup_position_in_grid]], uint lane [[thread_index_in_simdgroup]],
                             uint simd_id [[simdgroup_index_in_threadgroup]],
                             uint n_simd [[simdgroups_per_threadgroup]]) {
  const long n0 = (long(group_pos.x) * n_simd + simd_id) * OUTS;
  const long m0 = long(group_pos.y) * ROWS;
  const long words_per_row = k_in / VALUES_PER_WORD;
  const long groups_per_row = k_in / GROUP_SIZE;

  float acc[ROWS][OUTS];
  for (int r = 0; r < ROWS; ++r) {
    for (int o = 0; o < OUTS; ++o) {
      acc[r][o] = 0.0f;
    }
  }

  for (long k = long(lane) * STEP; k < k_in; k += 32 * STEP) {
    float xv[ROWS][STEP];
    float xsum[ROWS];
    for (int r = 0; r < ROWS; ++r) {
      xsum[r] = 0.0f;
      const bool row_ok = m0 + r < m_rows;
      const device T* xr = x + (row_ok ? m0 + r : 0) * x_row_stride + k * x_col_stride;
      for (int j = 0; j < STEP; ++j) {
        xv[r][j] = row_ok ? float(xr[j * x_col_stride]) : 0.0f;
        xsum[r] += xv[r][j];
      }
    }
    const long g = k / GROUP_SIZE;
    for (int o = 0; o < OUTS; ++o) {
      const long n = n0 + o;
      if (n >= n_out) {
        break;
      }
      const device uint* wr = w + n * words_per_row + k / VALUES_PER_WORD;
      float q[STEP];
      for (int i = 0; i < WORDS_PER_STEP; ++i) {
        const uint word = wr[i];
        for (int j = 0; j < VALUES_PER_WORD; ++j) {
          q[i * VALUES_PER_WORD + j] = float((word >> (BITS * j)) & LEVEL_MASK);
        }
      }
      const float s = float(scales[n * groups_per_row + g]);
      const float b = float(biases[n * groups_per_row + g]);
      for (int r = 0; r < ROWS; ++r) {
        float dot = 0.0f;
        for (int j = 0; j < STEP; ++j) {
          dot += xv[r][j] * q[j];
        }
        acc[r][o] += s * dot + b * xsum[r];
      }
    }
  }

  // Every lane takes part in every reduction; lane (r * OUTS + o) % 32 writes the result.
  for (int r = 0; r < ROWS; ++r) {
    for (int o = 0; o < OUTS; ++o) {
      const float total = simd_sum(acc[r][o]);
      const long m = m0 + r;
      const long n = n0 + o;
      if (uint((r * OUTS + o) % 32) == lane && m < m_rows && n < n_out) {
#if HAS_BIAS
        out[m * n_out + n] = T(total + float(bias[n]));
#else
        out[m * n_out + n] = T(total);
#endif
      }
    }
  }
}

INSTANTIATE_KERNEL(quantized_matvec)

#define TILE 32

template <typename T>
kernel void quantized_matmul(device T* out, const device T* x, const device uint* w, const device T* scales,
                             const device T* biases, QMV_BIAS_PARAM constant long& m_rows, constant long& n_out,
                             constant long& k_in, constant long& x_row_stride, constant long& x_col_stride,
                             uint2 group_pos [[threadgroup_position_in_grid]], uint tid [[thread_index_in_threadgroup]],
                             uint simd_id [[simdgroup_index_in_threadgroup]]) {
  threadgroup float xs[TILE * TILE];  // xs[m][k]
  threadgroup float ws[TILE * TILE];  // ws[n][k], the dequantized weight
  threadgroup float cs[TILE * TILE];  // the output tile, cs[m][n]
  const long m_base = long(group_pos.y) * TILE;
  const long n_base = long(group_pos.x) * TILE;
  const long words_per_row = k_in / VALUES_PER_WORD;
  const long groups_per_row = k_in / GROUP_SIZE;
  const uint lr = tid / 4;             // the tile row this thread stages
  const uint lc = (tid % 4) * STEP;    // its first column in the tile
  const uint r0 = (simd_id / 2) * 16;  // this SIMD-group's quadrant
  const uint c0 = (simd_id % 2) * 16;

  simdgroup_matrix<float, 8, 8> acc[2][2];
  for (int i = 0; i < 2; ++i) {
    for (int j = 0; j < 2; ++j) {
      acc[i][j] = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);
    }
  }

  const long m = m_base + lr;
  const long n = n_base + lr;
  for (long k0 = 0; k0 < k_in; k0 += TILE) {
    const long k = k0 + lc;
    const device T* xr = x + (m < m_rows ? m : 0) * x_row_stride + k * x_col_stride;
    for (int j = 0; j < STEP; ++j) {
      xs[lr * TILE + lc + j] = m < m_rows ? float(xr[j * x_col_stride]) : 0.0f;
    }
    if (n < n_out) {
      const device uint* wr = w + n * words_per_row + k / VALUES_PER_WORD;
      const float s = float(scales[n * groups_per_row + k / GROUP_SIZE]);
      const float b = float(biases[n * groups_per_row + k / GROUP_SIZE]);
      for (int i = 0; i < WORDS_PER_STEP; ++i) {
        const uint word = wr[i];
        for (int j = 0; j < VALUES_PER_WORD; ++j) {
          ws[lr * TILE + lc + i * VALUES_PER_WORD + j] = s * float((word >> (BITS * j)) & LEVEL_MASK) + b;
        }
      }
    } else {
      for (int j = 0; j < STEP; ++j) {
        ws[lr * TILE + lc + j] = 0.0f;
      }
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    for (uint kk = 0; kk < TILE; kk += 8) {
      simdgroup_matrix<float, 8, 8> a[2], bt[2];
      for (int i = 0; i < 2; ++i) {
        simdgroup_load(a[i], xs, TILE, ulong2(kk, r0 + 8 * i));
      }
      for (int j = 0; j < 2; ++j) {  // B = W^T: rows n of ws, read transposed
        simdgroup_load(bt[j], ws + (c0 + 8 * j) * TILE + kk, TILE, ulong2(0), true);
      }
      for (int i = 0; i < 2; ++i) {
        for (int j = 0; j < 2; ++j) {
          simdgroup_multiply_accumulate(acc[i][j], a[i], bt[j], acc[i][j]);
        }
      }
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
  }

  for (int i = 0; i < 2; ++i) {
    for (int j = 0; j < 2; ++j) {
      simdgroup_store(acc[i][j], cs, TILE, ulong2(c0 + 8 * j, r0 + 8 * i));
    }
  }
  threadgroup_barrier(mem_flags::mem_threadgroup);
  for (uint e = tid; e < TILE * TILE; e += 128) {
    const long om = m_base + e / TILE;
    const long on = n_base + e % TILE;
    if (om < m_rows && on < n_out) {
#if HAS_BIAS
      out[om * n_out + on] = T(cs[e] + float(bias[on]));
#else
      out[om * n_out + on] = T(cs[e]);
#endif
    }
  }
}

INSTANTIATE_KERNEL(quantized_matmul)
