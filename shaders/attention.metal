// Scaled dot-product attention, fp32 accumulation, GQA by index (kv_head = head / group).
//
//   attn_prefill  flash-style: BLOCK_Q queries of one (batch, head) per threadgroup; K/V
//                 tiles of BLOCK_KV keys staged in threadgroup memory; online softmax.
//   attn_decode   Sq <= DECODE_MAX_Q: each SIMD-group walks its own keys (lanes split the
//                 head dim), then the SIMD-groups' partial softmax states are merged, four
//                 query rows per pass (bounded registers at every head dim). With
//                 DECODE_SPLIT the keys are also split into partitions (one per threadgroup,
//                 grid x) that write partial max / sum / output for attn_reduce.
//   attn_reduce   merges the partitions of each query row.
//
// Specialized by the host (ops/attention.py):
//   HEAD_DIM, HEAD_DIM_V         D and Dv
//   SCALE                        softmax scale (float)
//   IS_CAUSAL                    query i sees keys j <= i (top-left aligned, as PyTorch)
//   HAS_WINDOW                   also hides keys j <= i - window (window is an int64 argument)
//   HAS_SOFTCAP, SOFTCAP         logit softcapping (Gemma 2): s = SOFTCAP * tanh(s / SOFTCAP) on the
//                                scaled score, before any mask is added
//   MASK_KIND                    0 none, 1 bool (uchar, nonzero keeps), 2 additive (T)
//   BLOCK_Q, BLOCK_KV, PREFILL_SIMD, DECODE_MAX_Q, DECODE_SIMD, DECODE_SPLIT
//
// Buffers (in order): outputs, then q, k, v, [mask, mask strides b/h/q/k], then int64
// Sq, Skv, group, window, q/k/v strides (batch, head, seq; the last dim is unit-stride).
// Outputs are contiguous (B, Hq, Sq, Dv); Hq is read from threadgroups_per_grid.y.
// Rows whose keys are all hidden give 0, as F.scaled_dot_product_attention does.
//
// No value is ever infinite (common.metal), so this holds with fast math too: a hidden key's
// score is FINITE_MIN (visible scores are kept above it), the softmax state starts at
// FINITE_MIN, a hidden key adds exactly 0 by test, not by exp(-inf), and a -inf in an
// additive mask is recognised by its bits.
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
#define MASK_ROW(i) (mask + b * m_sb + h * m_sh + (i) * m_sq)
#define MASK_STRIDE_K m_sk
#else
#define MASK_ROW(i) 0
#define MASK_STRIDE_K 0
#endif

// The score of query i against key j (both in range) after scaling and every mask;
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
        s = masked_score(dot, i, jg, window, MASK_ROW(i), MASK_STRIDE_K);
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

#define DECODE_THREADS (DECODE_SIMD * 32)
#define DECODE_ROWS 4  // query rows per pass over the keys: one float4 of scores
#define DECODE_PASSES ((DECODE_MAX_Q + DECODE_ROWS - 1) / DECODE_ROWS)

#if DECODE_SPLIT
#define DECODE_OUTPUTS device float *part_m, device float *part_l, device float *part_o
#else
#define DECODE_OUTPUTS device T* out
#endif

// Grid (partitions * DECODE_THREADS, Hq, B); partition p covers keys [p * part_size, ...).
//
// Registers: a lane keeps only the softmax state of DECODE_ROWS query rows (m, l and its
// DV_LANES output dims each, 48 floats at Dv = 256); the query rows are read from threadgroup
// memory, shared by every SIMD-group, and k and v one element at a time. Query rows beyond
// DECODE_ROWS take another pass over the keys (Sq 5..8 with decode_max_q = 8).
template <typename T>
kernel void attn_decode(DECODE_OUTPUTS, ATTN_INPUTS, constant long& part_size, ATTN_IDS) {
  threadgroup float qs[DECODE_PASSES * DECODE_ROWS * HEAD_DIM];
  threadgroup float ms[DECODE_SIMD * DECODE_ROWS];
  threadgroup float ls[DECODE_SIMD * DECODE_ROWS];
  threadgroup float os[DECODE_SIMD * DECODE_ROWS * HEAD_DIM_V];
  const long b = tgid.z, h = tgid.y, part = tgid.x;
  const long hk = h / group;
  const device T* qb = q + b * q_sb + h * q_sh;
  const device T* kb = k + b * k_sb + hk * k_sh;
  const device T* vb = v + b * v_sb + hk * v_sh;

  for (uint e = tid; e < DECODE_PASSES * DECODE_ROWS * HEAD_DIM; e += DECODE_THREADS) {
    const uint r = e / HEAD_DIM, d = e % HEAD_DIM;
    qs[e] = r < Sq ? float(qb[r * q_ss + d]) : 0.0f;
  }
  threadgroup_barrier(mem_flags::mem_threadgroup);
  const long j0 = part * part_size;
  long j1 = j0 + part_size < Skv ? j0 + part_size : Skv;
#if IS_CAUSAL
  j1 = j1 < Sq ? j1 : Sq;  // no query sees past key Sq - 1
#endif
  for (int r0 = 0; r0 < Sq; r0 += DECODE_ROWS) {  // the same passes in every thread
    float m[DECODE_ROWS], l[DECODE_ROWS], o[DECODE_ROWS][DV_LANES];
    for (int t = 0; t < DECODE_ROWS; ++t) {
      m[t] = FINITE_MIN;
      l[t] = 0.0f;
      for (int c = 0; c < DV_LANES; ++c) o[t][c] = 0.0f;
    }
    threadgroup const float* qp = qs + r0 * HEAD_DIM;
    for (long j = j0 + sg; j < j1; j += DECODE_SIMD) {
      float4 dots = float4(0.0f);
      for (int c = 0; c < D_LANES; ++c) {
        const uint d = lane + 32 * c;
        if (d < HEAD_DIM) {
          const float kd = float(kb[j * k_ss + d]);
          dots += float4(qp[d], qp[HEAD_DIM + d], qp[2 * HEAD_DIM + d], qp[3 * HEAD_DIM + d]) * kd;
        }
      }
      dots = simd_sum(dots);  // one reduction for the pass's rows
      float p[DECODE_ROWS];
      for (int t = 0; t < DECODE_ROWS; ++t) {
        const long r = r0 + t;
        p[t] = 0.0f;
        if (r < Sq) {
          const float s = masked_score(dots[t], r, j, window, MASK_ROW(r), MASK_STRIDE_K);
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
    // Merge the SIMD-groups' states of the pass's rows through threadgroup memory.
    for (int t = 0; t < DECODE_ROWS; ++t) {
      if (lane == 0) {
        ms[sg * DECODE_ROWS + t] = m[t];
        ls[sg * DECODE_ROWS + t] = l[t];
      }
      for (int c = 0; c < DV_LANES; ++c) {
        const uint d = lane + 32 * c;
        if (d < HEAD_DIM_V) os[(sg * DECODE_ROWS + t) * HEAD_DIM_V + d] = o[t][c];
      }
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    for (uint e = tid; e < DECODE_ROWS * HEAD_DIM_V; e += DECODE_THREADS) {
      const uint t = e / HEAD_DIM_V, d = e % HEAD_DIM_V;
      const long r = r0 + t;
      if (r >= Sq) continue;
      float mx = FINITE_MIN;
      for (int s = 0; s < DECODE_SIMD; ++s) mx = max(mx, ms[s * DECODE_ROWS + t]);
      float sum = 0.0f, acc = 0.0f;
      for (int s = 0; s < DECODE_SIMD; ++s) {
        const float w = exp(ms[s * DECODE_ROWS + t] - mx);  // a SIMD-group that saw no key has l = o = 0
        sum += ls[s * DECODE_ROWS + t] * w;
        acc += os[(s * DECODE_ROWS + t) * HEAD_DIM_V + d] * w;
      }
      const long row = (b * long(ngroups.y) + h) * Sq + r;
#if DECODE_SPLIT
      const long slot = row * long(ngroups.x) + part;
      part_o[slot * HEAD_DIM_V + d] = acc;
      if (d == 0) {
        part_m[slot] = mx;
        part_l[slot] = sum;
      }
#else
      out[row * HEAD_DIM_V + d] = T(sum > 0.0f ? acc / sum : 0.0f);
#endif
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);  // ms, ls, os are reused by the next pass
  }
}

// Grid (B * Hq * Sq * 32) in groups of 32: one SIMD-group per query row merges its partitions.
template <typename T>
kernel void attn_reduce(device T* out, const device float* part_m, const device float* part_l,
                        const device float* part_o, constant long& n_part, uint row [[threadgroup_position_in_grid]],
                        uint lane [[thread_index_in_threadgroup]]) {
  const long base = long(row) * n_part;
  float mx = FINITE_MIN;
  for (long p = 0; p < n_part; ++p) mx = max(mx, part_m[base + p]);
  float sum = 0.0f;
  for (long p = 0; p < n_part; ++p) sum += part_l[base + p] * exp(part_m[base + p] - mx);
  const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
  for (long d = lane; d < HEAD_DIM_V; d += 32) {
    float acc = 0.0f;
    for (long p = 0; p < n_part; ++p) acc += part_o[(base + p) * HEAD_DIM_V + d] * exp(part_m[base + p] - mx);
    out[long(row) * HEAD_DIM_V + d] = T(acc * inv);
  }
}

INSTANTIATE_KERNEL(attn_prefill)
INSTANTIATE_KERNEL(attn_decode)
#if DECODE_SPLIT
INSTANTIATE_KERNEL(attn_reduce)
#endif
