// Scaled dot-product attention, fp32 accumulation, GQA by index (kv_head = head / group).
//
//   attn_prefill      flash-style: BLOCK_Q queries of one (batch, head) per threadgroup; K/V
//                     tiles of BLOCK_KV keys staged in threadgroup memory; online softmax. Two
//                     bodies: with PREFILL_MATRIX (head dims multiples of 8) on the matrix units,
//                     each SIMD-group owning 8 query rows (BLOCK_Q = PREFILL_SIMD * 8), Q K^T and
//                     P V simdgroup_matrix 8x8 products accumulated in fp32; without it scalar,
//                     for any head dims.
//   attn_decode       Sq <= DECODE_MAX_Q: one threadgroup per (batch, DECODE_HEADS query heads,
//                     partition); with DECODE_HEADS = group every query head of a GQA group
//                     shares it, so each K/V row is read from device memory once per pass of
//                     DECODE_ROWS query rows (once in all when group * Sq <= DECODE_ROWS). Each
//                     SIMD-group walks its own keys (lanes split the head dim), then the
//                     SIMD-groups' softmax states are merged. With DECODE_SPLIT the keys are split
//                     into partitions (grid x) that write partial max / sum / normalized output.
//   attn_reduce       merges the partitions of each query row.
//
// Specialized by the host (ops/attention.py):
//   HEAD_DIM, HEAD_DIM_V         D and Dv
//   SCALE                        softmax scale (float)
//   IS_CAUSAL                    query i sees keys j <= i (top-left aligned, as PyTorch)
//   HAS_WINDOW                   also hides keys j <= i - window (window is an int64 argument)
//   HAS_SOFTCAP, SOFTCAP         logit softcapping (Gemma 2): s = SOFTCAP * tanh(s / SOFTCAP) on the
//                                scaled score, before any mask is added
//   MASK_KIND                    0 none, 1 bool (uchar, nonzero keeps), 2 additive (T)
//   BLOCK_Q, BLOCK_KV, PREFILL_SIMD, PREFILL_MATRIX, DECODE_MAX_Q, DECODE_SIMD, DECODE_SPLIT,
//   DECODE_HEADS (query heads per decode threadgroup), DECODE_ROWS (query rows per pass: 4 or 8)
//
// Buffers (in order): outputs, then q, k, v, [mask, mask strides b/h/q/k], then int64
// Sq, Skv, group, window, q/k/v strides (batch, head, seq; the last dim is unit-stride).
// Outputs are contiguous (B, Hq, Sq, Dv); Hq is threadgroups_per_grid.y (times DECODE_HEADS).
// Rows whose keys are all hidden give 0, as F.scaled_dot_product_attention does.
//
// No value is ever infinite (common.metal), so this holds with fast math too: a hidden key's
// score is FINITE_MIN (visible scores are kept above it), the softmax state starts at
// FINITE_MIN, a hidden key adds exactly 0 by test, not by exp(-inf), and a -inf in an
// additive mask is recognised by its bits.
#include <metal_simdgroup_matrix>

#define D_LANES ((HEAD_DIM + 31) / 32)
#define DV_LANES ((HEAD_DIM_V + 31) / 32)

#if MASK_KIND == 1
#define MASK_T uchar
#elif MASK_KIND == 2
#define MASK_T T
#endif
#if MASK_KIND
#define MASK_PARAMS \
  const device MASK_T *mask, constant long &m_sb, constant long &m_sh, constant long &m_sq, constant long &m_sk,
#else
#define MASK_PARAMS
#endif

#define ATTN_INPUTS                                                                                               \
  const device T *q, const device T *k, const device T *v, MASK_PARAMS constant long &Sq, constant long &Skv,     \
      constant long &group, constant long &window, constant long &q_sb, constant long &q_sh, constant long &q_ss, \
      constant long &k_sb, constant long &k_sh, constant long &k_ss, constant long &v_sb, constant long &v_sh,    \
      constant long &v_ss

#define ATTN_IDS                                                                         \
  uint3 tgid [[threadgroup_position_in_grid]], uint3 ngroups [[threadgroups_per_grid]],  \
      uint tid [[thread_index_in_threadgroup]], uint lane [[thread_index_in_simdgroup]], \
      uint sg [[simdgroup_index_in_threadgroup]]

#if MASK_KIND
#define MASK_ROW(h, i) (mask + b * m_sb + (h) * m_sh + (i) * m_sq)
#define MASK_STRIDE_K m_sk
#else
#define MASK_ROW(h, i) 0
#define MASK_STRIDE_K 0
#endif

// The score of query i against key j (both in range) after scaling and every mask, for every
// kernel (the one place a score is formed from a dot product);
// FINITE_MIN where the key is hidden, above it where not. `mrow` is the mask row of
// query i (unused without a mask).
template <typename M>
inline float masked_score(float dot, long i, long j, long window, M mrow, long m_stride) {
#if IS_CAUSAL
  if (j > i) return FINITE_MIN;
#endif
#if HAS_WINDOW
  if (j <= i - window) return FINITE_MIN;
#endif
  float s = dot * SCALE;
#if HAS_SOFTCAP
  s = tanh(s / SOFTCAP) * SOFTCAP;
#endif
#if MASK_KIND == 1
  if (mrow[j * m_stride] == 0) return FINITE_MIN;
#elif MASK_KIND == 2
  const auto bias = mrow[j * m_stride];
  if (is_neg_inf(bias)) return FINITE_MIN;
  s += float(bias);
#endif
  return max(s, FINITE_MIN_INNER);
}

// exp(s - m) for a score, exactly 0 for a hidden key.
inline float key_weight(float s, float m) {
  return s == FINITE_MIN ? 0.0f : exp(s - m);
}

#define KPAD (HEAD_DIM + 1)  // K tile row pitch: lanes read different rows at one column
#define PREFILL_THREADS (PREFILL_SIMD * 32)
#define ROWS_PER_SIMD (BLOCK_Q / PREFILL_SIMD)

#if !PREFILL_MATRIX
template <typename T>
kernel void attn_prefill(device T* out, ATTN_INPUTS, ATTN_IDS) {
  threadgroup float qs[BLOCK_Q * HEAD_DIM];
  threadgroup float ks[BLOCK_KV * KPAD];
  threadgroup float vs[BLOCK_KV * HEAD_DIM_V];
  threadgroup float ps[BLOCK_Q * BLOCK_KV];  // scores, then probabilities, of the tile
  const long b = tgid.z, h = tgid.y, q0 = long(tgid.x) * BLOCK_Q;
  const long hk = h / group;
  const device T* qb = q + b * q_sb + h * q_sh;
  const device T* kb = k + b * k_sb + hk * k_sh;
  const device T* vb = v + b * v_sb + hk * v_sh;

  for (uint e = tid; e < BLOCK_Q * HEAD_DIM; e += PREFILL_THREADS) {
    const long r = e / HEAD_DIM, d = e % HEAD_DIM;
    qs[e] = q0 + r < Sq ? float(qb[(q0 + r) * q_ss + d]) : 0.0f;
  }
  float m[ROWS_PER_SIMD], l[ROWS_PER_SIMD], o[ROWS_PER_SIMD][DV_LANES];
  for (int rr = 0; rr < ROWS_PER_SIMD; ++rr) {
    m[rr] = FINITE_MIN;
    l[rr] = 0.0f;
    for (int c = 0; c < DV_LANES; ++c) o[rr][c] = 0.0f;
  }
  // Keys any query of the block can see.
  long k_begin = 0, k_end = Skv;
#if IS_CAUSAL
  k_end = q0 + BLOCK_Q < Skv ? q0 + BLOCK_Q : Skv;
#endif
#if HAS_WINDOW
  k_begin = q0 - window + 1 > 0 ? q0 - window + 1 : 0;
#endif
  for (long k0 = k_begin; k0 < k_end; k0 += BLOCK_KV) {
    threadgroup_barrier(mem_flags::mem_threadgroup);  // the previous tile is consumed
    for (uint e = tid; e < BLOCK_KV * HEAD_DIM; e += PREFILL_THREADS) {
      const long j = e / HEAD_DIM, d = e % HEAD_DIM;
      ks[j * KPAD + d] = k0 + j < Skv ? float(kb[(k0 + j) * k_ss + d]) : 0.0f;
    }
    for (uint e = tid; e < BLOCK_KV * HEAD_DIM_V; e += PREFILL_THREADS) {
      const long j = e / HEAD_DIM_V, d = e % HEAD_DIM_V;
      vs[e] = k0 + j < Skv ? float(vb[(k0 + j) * v_ss + d]) : 0.0f;  // zeros: p * v stays 0
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    for (uint e = tid; e < BLOCK_Q * BLOCK_KV; e += PREFILL_THREADS) {
      const long r = e / BLOCK_KV, j = e % BLOCK_KV, i = q0 + r, jg = k0 + j;
      float s = FINITE_MIN;
      if (i < Sq && jg < Skv) {
        float dot = 0.0f;
        for (int d = 0; d < HEAD_DIM; ++d) dot += qs[r * HEAD_DIM + d] * ks[j * KPAD + d];
        s = masked_score(dot, i, jg, window, MASK_ROW(h, i), MASK_STRIDE_K);
      }
      ps[e] = s;
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    // Each SIMD-group owns ROWS_PER_SIMD rows of ps: online softmax, then P @ V.
    for (int rr = 0; rr < ROWS_PER_SIMD; ++rr) {
      threadgroup float* pr = ps + (sg * ROWS_PER_SIMD + rr) * BLOCK_KV;
      float mx = FINITE_MIN;
      for (uint j = lane; j < BLOCK_KV; j += 32) mx = max(mx, pr[j]);
      const float m_new = max(m[rr], simd_max(mx));
      const float alpha = exp(m[rr] - m_new);  // 1 while nothing is visible (l and o are 0)
      float sum = 0.0f;
      for (uint j = lane; j < BLOCK_KV; j += 32) {
        const float p = key_weight(pr[j], m_new);
        pr[j] = p;
        sum += p;
      }
      l[rr] = l[rr] * alpha + simd_sum(sum);
      m[rr] = m_new;
      simdgroup_barrier(mem_flags::mem_threadgroup);  // pr written by every lane, read by all
      for (int c = 0; c < DV_LANES; ++c) {
        const uint d = lane + 32 * c;
        if (d < HEAD_DIM_V) {
          float acc = o[rr][c] * alpha;
          for (int j = 0; j < BLOCK_KV; ++j) acc += pr[j] * vs[j * HEAD_DIM_V + d];
          o[rr][c] = acc;
        }
      }
    }
  }
  const long H = ngroups.y;
  for (int rr = 0; rr < ROWS_PER_SIMD; ++rr) {
    const long i = q0 + sg * ROWS_PER_SIMD + rr;
    if (i < Sq) {
      const float inv = l[rr] > 0.0f ? 1.0f / l[rr] : 0.0f;
      device T* orow = out + ((b * H + h) * Sq + i) * HEAD_DIM_V;
      for (int c = 0; c < DV_LANES; ++c) {
        const uint d = lane + 32 * c;
        if (d < HEAD_DIM_V) orow[d] = T(o[rr][c] * inv);
      }
    }
  }
}

#endif

#if PREFILL_MATRIX
#define MMA_ROWS (PREFILL_SIMD * 8)  // queries per threadgroup: 8 per SIMD-group
#define D_FRAGS (HEAD_DIM / 8)
#define DV_FRAGS (HEAD_DIM_V / 8)
#define KV_FRAGS (BLOCK_KV / 8)
typedef simdgroup_matrix<float, 8, 8> frag8;

// Grid (ceil(Sq / MMA_ROWS) * PREFILL_THREADS, Hq, B). SIMD-group sg owns query rows
// q0 + 8 sg .. + 7: its Q strip (D / 8 fragments) and output strip (Dv / 8 fragments) stay in
// registers for the whole kernel; K and V tiles are staged once per threadgroup as fp32. Scores
// go through the SIMD-group's own 8 x BLOCK_KV slice of threadgroup memory, where masks and the
// online softmax are applied row by row; the running output is rescaled by a diagonal product,
// so nothing depends on which lane holds which matrix element.
template <typename T>
kernel void attn_prefill(device T* out, ATTN_INPUTS, ATTN_IDS) {
  threadgroup float ks[BLOCK_KV * HEAD_DIM];
  threadgroup float vs[BLOCK_KV * HEAD_DIM_V];
  threadgroup float ss[PREFILL_SIMD * 8 * BLOCK_KV];  // per SIMD-group: scores, then probabilities
  threadgroup float ds[PREFILL_SIMD * 64];            // per SIMD-group: an 8 x 8 staging square
  const long b = tgid.z, h = tgid.y, q0 = long(tgid.x) * MMA_ROWS;
  const long hk = h / group;
  const long r0 = q0 + 8 * long(sg);  // this SIMD-group's first query row
  const device T* qb = q + b * q_sb + h * q_sh;
  const device T* kb = k + b * k_sb + hk * k_sh;
  const device T* vb = v + b * v_sb + hk * v_sh;
  threadgroup float* sp = ss + sg * 8 * BLOCK_KV;
  threadgroup float* dp = ds + sg * 64;

  frag8 qf[D_FRAGS];  // rows past Sq are zeros
  for (int f = 0; f < D_FRAGS; ++f) {
    for (uint e = lane; e < 64; e += 32) {
      const long i = r0 + e / 8;
      dp[e] = i < Sq ? float(qb[i * q_ss + f * 8 + e % 8]) : 0.0f;
    }
    simdgroup_barrier(mem_flags::mem_threadgroup);
    simdgroup_load(qf[f], dp, 8);
    simdgroup_barrier(mem_flags::mem_threadgroup);
  }
  frag8 of[DV_FRAGS];
  for (int f = 0; f < DV_FRAGS; ++f) of[f] = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);
  float m[8], l[8], alpha[8];  // the strip's softmax state, the same in every lane
  for (int rr = 0; rr < 8; ++rr) {
    m[rr] = FINITE_MIN;
    l[rr] = 0.0f;
  }
  // Keys any query of the block can see (tiles past them are never loaded), and those of this
  // SIMD-group's rows (tiles outside them are loaded for the others but not computed).
  long k_begin = 0, k_end = Skv, s_begin = 0, s_end = Skv;
#if IS_CAUSAL
  k_end = q0 + MMA_ROWS < Skv ? q0 + MMA_ROWS : Skv;
  s_end = r0 + 8 < Skv ? r0 + 8 : Skv;
#endif
#if HAS_WINDOW
  k_begin = q0 - window + 1 > 0 ? q0 - window + 1 : 0;
  s_begin = r0 - window + 1 > 0 ? r0 - window + 1 : 0;
#endif
  for (long k0 = k_begin; k0 < k_end; k0 += BLOCK_KV) {
    threadgroup_barrier(mem_flags::mem_threadgroup);  // the previous tile is consumed
    for (uint e = tid; e < BLOCK_KV * HEAD_DIM; e += PREFILL_THREADS) {
      const long j = e / HEAD_DIM, d = e % HEAD_DIM;
      ks[e] = k0 + j < Skv ? float(kb[(k0 + j) * k_ss + d]) : 0.0f;
    }
    for (uint e = tid; e < BLOCK_KV * HEAD_DIM_V; e += PREFILL_THREADS) {
      const long j = e / HEAD_DIM_V, d = e % HEAD_DIM_V;
      vs[e] = k0 + j < Skv ? float(vb[(k0 + j) * v_ss + d]) : 0.0f;  // zeros: p * v stays 0
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    if (r0 >= Sq || k0 >= s_end || k0 + BLOCK_KV <= s_begin) continue;  // uniform in the SIMD-group
    // S = Q K^T, 8 keys at a time.
    for (int jf = 0; jf < KV_FRAGS; ++jf) {
      frag8 s = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);
      for (int f = 0; f < D_FRAGS; ++f) {
        frag8 kt;
        simdgroup_load(kt, ks + jf * 8 * HEAD_DIM + f * 8, HEAD_DIM, ulong2(0), true);
        simdgroup_multiply_accumulate(s, qf[f], kt, s);
      }
      simdgroup_store(s, sp + jf * 8, BLOCK_KV);
    }
    simdgroup_barrier(mem_flags::mem_threadgroup);
    for (int rr = 0; rr < 8; ++rr) {  // masks and online softmax, row by row
      const long i = r0 + rr;
      threadgroup float* pr = sp + rr * BLOCK_KV;
      float mx = FINITE_MIN;
      for (uint j = lane; j < BLOCK_KV; j += 32) {
        const long jg = k0 + j;
        const float s =
            i < Sq && jg < Skv ? masked_score(pr[j], i, jg, window, MASK_ROW(h, i), MASK_STRIDE_K) : FINITE_MIN;
        pr[j] = s;
        mx = max(mx, s);
      }
      const float m_new = max(m[rr], simd_max(mx));
      alpha[rr] = exp(m[rr] - m_new);  // 1 while nothing is visible (l and the output are 0)
      float sum = 0.0f;
      for (uint j = lane; j < BLOCK_KV; j += 32) {
        const float p = key_weight(pr[j], m_new);
        pr[j] = p;
        sum += p;
      }
      l[rr] = l[rr] * alpha[rr] + simd_sum(sum);
      m[rr] = m_new;
    }
    for (uint e = lane; e < 64; e += 32) dp[e] = e / 8 == e % 8 ? alpha[e / 8] : 0.0f;
    simdgroup_barrier(mem_flags::mem_threadgroup);
    frag8 rescale;
    simdgroup_load(rescale, dp, 8);
    for (int f = 0; f < DV_FRAGS; ++f) {  // O = diag(alpha) O + P V
      frag8 scaled;
      simdgroup_multiply(scaled, rescale, of[f]);
      of[f] = scaled;
    }
    for (int jf = 0; jf < KV_FRAGS; ++jf) {
      frag8 p;
      simdgroup_load(p, sp + jf * 8, BLOCK_KV);
      for (int f = 0; f < DV_FRAGS; ++f) {
        frag8 vf;
        simdgroup_load(vf, vs + jf * 8 * HEAD_DIM_V + f * 8, HEAD_DIM_V);
        simdgroup_multiply_accumulate(of[f], p, vf, of[f]);
      }
    }
    simdgroup_barrier(mem_flags::mem_threadgroup);  // sp and dp are rewritten by the next tile
  }
  if (r0 >= Sq) return;  // after the last threadgroup barrier
  for (uint e = lane; e < 64; e += 32) dp[e] = e / 8 == e % 8 && l[e / 8] > 0.0f ? 1.0f / l[e / 8] : 0.0f;
  simdgroup_barrier(mem_flags::mem_threadgroup);
  frag8 norm;
  simdgroup_load(norm, dp, 8);
  simdgroup_barrier(mem_flags::mem_threadgroup);
  const long H = ngroups.y;
  for (int f = 0; f < DV_FRAGS; ++f) {
    frag8 o;
    simdgroup_multiply(o, norm, of[f]);
    simdgroup_store(o, dp, 8);
    simdgroup_barrier(mem_flags::mem_threadgroup);
    for (uint e = lane; e < 64; e += 32) {
      const long i = r0 + e / 8;
      if (i < Sq) out[((b * H + h) * Sq + i) * HEAD_DIM_V + f * 8 + e % 8] = T(dp[e]);
    }
    simdgroup_barrier(mem_flags::mem_threadgroup);
  }
}
#endif

#define DECODE_THREADS (DECODE_SIMD * 32)
#define DECODE_V4 (DECODE_ROWS / 4)  // float4s of scores per key

#if DECODE_SPLIT
#define DECODE_OUTPUTS device float *part_m, device float *part_l, device T *part_o
#else
#define DECODE_OUTPUTS device T* out
#endif

// Grid (partitions * DECODE_THREADS, Hq / DECODE_HEADS, B); partition p covers keys
// [p * part_size, ...). The threadgroup's query rows are r = head * Sq + i over its DECODE_HEADS
// heads, taken DECODE_ROWS at a time: each pass stages its rows in threadgroup memory (shared by
// every SIMD-group) and walks the partition's keys once, so K and V are read once per pass.
//
// Registers: a lane keeps only the softmax state of DECODE_ROWS query rows (m, l and its
// DV_LANES output dims each: the host takes 8 rows up to Dv = 128, 4 above) and k and v one
// element at a time. The SIMD-groups' states are merged one row at a time through threadgroup
// memory, so the merge buffer does not grow with DECODE_ROWS.
template <typename T>
kernel void attn_decode(DECODE_OUTPUTS, ATTN_INPUTS, constant long& part_size, ATTN_IDS) {
  threadgroup float qs[DECODE_ROWS * HEAD_DIM];
  threadgroup float ms[DECODE_SIMD * DECODE_ROWS];
  threadgroup float ls[DECODE_SIMD * DECODE_ROWS];
  threadgroup float os[DECODE_SIMD * HEAD_DIM_V];
  const long b = tgid.z, h0 = long(tgid.y) * DECODE_HEADS, part = tgid.x;
  const long hk = h0 / group, Hq = long(ngroups.y) * DECODE_HEADS, rows = DECODE_HEADS * Sq;
  const device T* kb = k + b * k_sb + hk * k_sh;
  const device T* vb = v + b * v_sb + hk * v_sh;
  const long j0 = part * part_size;
  long j1 = j0 + part_size < Skv ? j0 + part_size : Skv;
#if IS_CAUSAL
  j1 = j1 < Sq ? j1 : Sq;  // no query sees past key Sq - 1
#endif
  for (long r0 = 0; r0 < rows; r0 += DECODE_ROWS) {  // the same passes in every thread
    for (uint e = tid; e < DECODE_ROWS * HEAD_DIM; e += DECODE_THREADS) {
      const long r = r0 + e / HEAD_DIM, d = e % HEAD_DIM;
      qs[e] = r < rows ? float(q[b * q_sb + (h0 + r / Sq) * q_sh + (r % Sq) * q_ss + d]) : 0.0f;
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    float m[DECODE_ROWS], l[DECODE_ROWS], o[DECODE_ROWS][DV_LANES];
    for (int t = 0; t < DECODE_ROWS; ++t) {
      m[t] = FINITE_MIN;
      l[t] = 0.0f;
      for (int c = 0; c < DV_LANES; ++c) o[t][c] = 0.0f;
    }
    for (long j = j0 + sg; j < j1; j += DECODE_SIMD) {
      float4 dots[DECODE_V4];
      for (int w = 0; w < DECODE_V4; ++w) dots[w] = float4(0.0f);
      for (int c = 0; c < D_LANES; ++c) {
        const uint d = lane + 32 * c;
        if (d < HEAD_DIM) {
          const float kd = float(kb[j * k_ss + d]);
          for (int w = 0; w < DECODE_V4; ++w) {
            threadgroup const float* qp = qs + 4 * w * HEAD_DIM + d;
            dots[w] += float4(qp[0], qp[HEAD_DIM], qp[2 * HEAD_DIM], qp[3 * HEAD_DIM]) * kd;
          }
        }
      }
      for (int w = 0; w < DECODE_V4; ++w) dots[w] = simd_sum(dots[w]);  // one reduction per 4 rows
      float p[DECODE_ROWS];
      for (int t = 0; t < DECODE_ROWS; ++t) {
        const long r = r0 + t, i = r % Sq;
        p[t] = 0.0f;
        if (r < rows) {
          const float s = masked_score(dots[t / 4][t % 4], i, j, window, MASK_ROW(h0 + r / Sq, i), MASK_STRIDE_K);
          const float m_new = max(m[t], s);
          const float alpha = exp(m[t] - m_new);
          p[t] = key_weight(s, m_new);
          l[t] = l[t] * alpha + p[t];
          m[t] = m_new;
          for (int c = 0; c < DV_LANES; ++c) o[t][c] *= alpha;
        }
      }
      for (int c = 0; c < DV_LANES; ++c) {
        const uint d = lane + 32 * c;
        const float vd = d < HEAD_DIM_V ? float(vb[j * v_ss + d]) : 0.0f;
        for (int t = 0; t < DECODE_ROWS; ++t) o[t][c] += p[t] * vd;
      }
    }
    // Merge the SIMD-groups' states of the pass's rows through threadgroup memory, a row at a time.
    if (lane == 0) {
      for (int t = 0; t < DECODE_ROWS; ++t) {
        ms[sg * DECODE_ROWS + t] = m[t];
        ls[sg * DECODE_ROWS + t] = l[t];
      }
    }
    for (int t = 0; t < DECODE_ROWS && r0 + t < rows; ++t) {
      for (int c = 0; c < DV_LANES; ++c) {
        const uint d = lane + 32 * c;
        if (d < HEAD_DIM_V) os[sg * HEAD_DIM_V + d] = o[t][c];
      }
      threadgroup_barrier(mem_flags::mem_threadgroup);
      const long r = r0 + t;
      const long row = (b * Hq + h0 + r / Sq) * Sq + r % Sq;
      for (uint d = tid; d < HEAD_DIM_V; d += DECODE_THREADS) {
        float mx = FINITE_MIN;
        for (int s = 0; s < DECODE_SIMD; ++s) mx = max(mx, ms[s * DECODE_ROWS + t]);
        float sum = 0.0f, acc = 0.0f;
        for (int s = 0; s < DECODE_SIMD; ++s) {
          const float w = exp(ms[s * DECODE_ROWS + t] - mx);  // a SIMD-group that saw no key has l = o = 0
          sum += ls[s * DECODE_ROWS + t] * w;
          acc += os[s * HEAD_DIM_V + d] * w;
        }
        const float value = sum > 0.0f ? acc / sum : 0.0f;  // the partition's (or row's) normalized output
#if DECODE_SPLIT
        const long slot = row * long(ngroups.x) + part;
        part_o[slot * HEAD_DIM_V + d] = T(value);
        if (d == 0) {
          part_m[slot] = mx;
          part_l[slot] = sum;
        }
#else
        out[row * HEAD_DIM_V + d] = T(value);
#endif
      }
      threadgroup_barrier(mem_flags::mem_threadgroup);  // os (and, after the last row, qs) are reused
    }
  }
}

// Grid (B * Hq * Sq * 32) in groups of 32: one SIMD-group per query row merges its partitions,
// each a normalized output weighted by its sum of exponentials relative to the common maximum.
// Partition p's max and sum are read by lane p % 32 (once for the common max and sum, once for
// its weight), its outputs once; the weights reach the other lanes by shuffle.
template <typename T>
kernel void attn_reduce(device T* out, const device float* part_m, const device float* part_l, const device T* part_o,
                        constant long& n_part, uint row [[threadgroup_position_in_grid]],
                        uint lane [[thread_index_in_threadgroup]]) {
  const long base = long(row) * n_part;
  float mx = FINITE_MIN, sum = 0.0f;  // this lane's partitions, merged online
  for (long p = lane; p < n_part; p += 32) {
    const float mp = part_m[base + p], m_new = max(mx, mp);
    sum = sum * exp(mx - m_new) + part_l[base + p] * exp(mp - m_new);
    mx = m_new;
  }
  const float m_all = simd_max(mx);
  const float sum_all = simd_sum(sum * exp(mx - m_all));
  const float inv = sum_all > 0.0f ? 1.0f / sum_all : 0.0f;
  float acc[DV_LANES];
  for (int c = 0; c < DV_LANES; ++c) acc[c] = 0.0f;
  for (long p0 = 0; p0 < n_part; p0 += 32) {
    const long p = p0 + lane;
    const float w = p < n_part ? part_l[base + p] * exp(part_m[base + p] - m_all) * inv : 0.0f;
    const long n = n_part - p0 < 32 ? n_part - p0 : 32;
    for (long t = 0; t < n; ++t) {
      const float wt = simd_shuffle(w, ushort(t));
      const device T* po = part_o + (base + p0 + t) * HEAD_DIM_V;
      for (int c = 0; c < DV_LANES; ++c) {
        const uint d = lane + 32 * c;
        if (d < HEAD_DIM_V) acc[c] += float(po[d]) * wt;
      }
    }
  }
  for (int c = 0; c < DV_LANES; ++c) {
    const uint d = lane + 32 * c;
    if (d < HEAD_DIM_V) out[long(row) * HEAD_DIM_V + d] = T(acc[c]);
  }
}

INSTANTIATE_KERNEL(attn_prefill)
INSTANTIATE_KERNEL(attn_decode)
#if DECODE_SPLIT
INSTANTIATE_KERNEL(attn_reduce)
#endif
