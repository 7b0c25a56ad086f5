// Rotary position embedding: the first R features of each head become
// x * cos + rotate(x) * sin, the rest are copied, fp32 math.
//
// rotate is rotate_half (Llama / NeoX: pair (i, i + R/2)) or, with
// INTERLEAVED, rotate_every_two (GPT-J: pair (2i, 2i + 1)). For a pair
// (i0, i1): out[i0] = x0 * cos[i0] - x1 * sin[i0],
//           out[i1] = x1 * cos[i1] + x0 * sin[i1].
//
// One thread per work item of a position (b, s): R/2 rotated pairs, then D - R
// copied features; n_items = R/2 + D - R. The thread walks every head of its
// position, so a table entry that is the same for all heads (cos and sin
// broadcast over heads, as every model has them) is read once per position,
// not once per head: the kernel moves x, cos and sin once and the output once.
//
// Inputs are read through their strides (x as any (B, H, S, D) view; cos and
// sin through strides of their broadcast, 0 along broadcast dimensions), so
// the host never copies them.
//
// Kernels:
// - rope: one tensor x (B, H, S, D) into a contiguous out; cos and sin may
//   vary by head (c_sh, s_sh != 0: reloaded per head).
// - rope_qk: q (B, Hq, S, D) and k (B, Hk, S, D) with the same tables, which
//   broadcast over heads, in one launch; q's output is contiguous, k's is
//   written through its own (b, h, s) strides (feature stride 1).
//
// Metal binds at most 31 buffers to a kernel (its buffer argument table), and
// every `constant long&` takes one: rope has 22, rope_qk 29.
//
// Specialized by the host (ops/rope.py): DTYPE, INTERLEAVED 0 or 1, IDX64 (common.metal).
//
// rope buffers (in order): out, x, cos, sin (named cos_t, sin_t), then int64
// n_pos, n_items, heads, seq, dim, rot, x strides (b, h, s, d), cos strides
// (b, h, s, d), sin strides (b, h, s, d), all in elements.
//
// rope_qk buffers: q_out, k_out, q, k, cos_t, sin_t, then int64 n_pos, n_items,
// q_heads, k_heads, seq, rot, q strides (b, h, s, d), k strides (b, h, s, d),
// k_out strides (b, h, s), cos strides (b, s, d), sin strides (b, s, d).

// The (x0, x1) features of a rotated pair, or (d, d) for a copied feature.
struct RopeItem {
  idx_t i0;
  idx_t i1;
  bool rotated;
};

inline RopeItem rope_item(idx_t t, idx_t rot) {
  const idx_t half_rot = rot / 2;
  if (t >= half_rot) {
    const idx_t d = rot + (t - half_rot);
    return {d, d, false};
  }
#if INTERLEAVED
  return {2 * t, 2 * t + 1, true};
#else
  return {t, t + half_rot, true};
#endif
}

// The four table values a pair needs: cos and sin at i0 and i1.
struct RopeTable {
  float c0;
  float c1;
  float s0;
  float s1;
};

template <typename T>
inline RopeTable rope_table(const device T* cr, idx_t cd, const device T* sr, idx_t sd, RopeItem it) {
  return {float(cr[it.i0 * cd]), float(cr[it.i1 * cd]), float(sr[it.i0 * sd]), float(sr[it.i1 * sd])};
}

// One head's item: the rotated pair, or the copied feature.
template <typename T>
inline void rope_apply(device T* yr, const device T* xr, idx_t xd, RopeItem it, RopeTable tb) {
  if (!it.rotated) {
    yr[it.i0] = xr[it.i0 * xd];
    return;
  }
  const float x0 = float(xr[it.i0 * xd]);
  const float x1 = float(xr[it.i1 * xd]);
  yr[it.i0] = T(x0 * tb.c0 - x1 * tb.s0);
  yr[it.i1] = T(x1 * tb.c1 + x0 * tb.s1);
}

template <typename T>
kernel void rope(device T* out, const device T* x, const device T* cos_t, const device T* sin_t, constant long& n_pos,
                 constant long& n_items, constant long& heads, constant long& seq, constant long& dim,
                 constant long& rot, constant long& x_sb, constant long& x_sh, constant long& x_ss, constant long& x_sd,
                 constant long& c_sb, constant long& c_sh, constant long& c_ss, constant long& c_sd,
                 constant long& s_sb, constant long& s_sh, constant long& s_ss, constant long& s_sd,
                 uint gid [[thread_position_in_grid]]) {
  // The grid has n_pos * n_items < 2^32 threads (the host checks), so the (position, item)
  // and (b, s) splits are 32-bit.
  const uint items = uint(n_items), s_len = uint(seq);
  const uint pos = gid / items;
  const idx_t t = gid - pos * items;
  if (pos >= uint(n_pos)) {
    return;
  }
  const uint b = pos / s_len;
  const uint s = pos - b * s_len;
  const RopeItem it = rope_item(t, idx_t(rot));
  const device T* xr = x + long(b) * x_sb + long(s) * x_ss;
  device T* yr = out + (long(b) * heads * seq + long(s)) * dim;  // out is contiguous (B, H, S, D)
  const long y_sh = seq * dim;
  const device T* cr = cos_t + long(b) * c_sb + long(s) * c_ss;
  const device T* sr = sin_t + long(b) * s_sb + long(s) * s_ss;
  const idx_t cd = idx_t(c_sd), sd = idx_t(s_sd), xd = idx_t(x_sd);
  const bool per_head = c_sh != 0 || s_sh != 0;
  RopeTable tb = {0.0f, 0.0f, 0.0f, 0.0f};
  if (it.rotated) {
    tb = rope_table(cr, cd, sr, sd, it);
  }
  for (long h = 0; h < heads; ++h) {
    if (it.rotated && per_head && h > 0) {
      tb = rope_table(cr + h * c_sh, cd, sr + h * s_sh, sd, it);
    }
    rope_apply(yr + h * y_sh, xr + h * x_sh, xd, it, tb);
  }
}

template <typename T>
kernel void rope_qk(device T* q_out, device T* k_out, const device T* q, const device T* k, const device T* cos_t,
                    const device T* sin_t, constant long& n_pos, constant long& n_items, constant long& q_heads,
                    constant long& k_heads, constant long& seq, constant long& rot, constant long& q_sb,
                    constant long& q_sh, constant long& q_ss, constant long& q_sd, constant long& k_sb,
                    constant long& k_sh, constant long& k_ss, constant long& k_sd, constant long& ko_sb,
                    constant long& ko_sh, constant long& ko_ss, constant long& c_sb, constant long& c_ss,
                    constant long& c_sd, constant long& s_sb, constant long& s_ss, constant long& s_sd,
                    uint gid [[thread_position_in_grid]]) {
  const uint items = uint(n_items), s_len = uint(seq);
  const uint pos = gid / items;
  const idx_t t = gid - pos * items;
  if (pos >= uint(n_pos)) {
    return;
  }
  const uint b = pos / s_len;
  const uint s = pos - b * s_len;
  const RopeItem it = rope_item(t, idx_t(rot));
  RopeTable tb = {0.0f, 0.0f, 0.0f, 0.0f};
  if (it.rotated) {  // once for all q and k heads of the position
    tb = rope_table(cos_t + long(b) * c_sb + long(s) * c_ss, idx_t(c_sd), sin_t + long(b) * s_sb + long(s) * s_ss,
                    idx_t(s_sd), it);
  }
  // q_out is contiguous (B, Hq, S, D), with D = n_items + R/2.
  const long dim = n_items + rot / 2;
  const device T* qr = q + long(b) * q_sb + long(s) * q_ss;
  device T* qy = q_out + (long(b) * q_heads * seq + long(s)) * dim;
  for (long h = 0; h < q_heads; ++h) {
    rope_apply(qy + h * seq * dim, qr + h * q_sh, idx_t(q_sd), it, tb);
  }
  const device T* kr = k + long(b) * k_sb + long(s) * k_ss;
  device T* ky = k_out + long(b) * ko_sb + long(s) * ko_ss;
  for (long h = 0; h < k_heads; ++h) {
    rope_apply(ky + h * ko_sh, kr + h * k_sh, idx_t(k_sd), it, tb);
  }
}

INSTANTIATE_KERNEL(rope)
INSTANTIATE_KERNEL(rope_qk)
