// Rotary position embedding in one pass over x (B, H, S, D): the first R
// features become x * cos + rotate(x) * sin, the rest are copied, fp32 math.
//
// rotate is rotate_half (Llama / NeoX: pair (i, i + R/2)) or, with
// INTERLEAVED, rotate_every_two (GPT-J: pair (2i, 2i + 1)). For a pair
// (i0, i1): out[i0] = x0 * cos[i0] - x1 * sin[i0],
//           out[i1] = x1 * cos[i1] + x0 * sin[i1].
//
// x is read through its strides; cos and sin (last dim R) through strides of
// their broadcast to (B, H, S, R), 0 along broadcast dimensions, so the host
// never materializes them. out is contiguous (B, H, S, D).
//
// One thread per work item of a row: R/2 rotated pairs, then D - R copied
// features; n_items = R/2 + D - R.
//
// Specialized by the host (ops/rope.py): DTYPE, INTERLEAVED 0 or 1, IDX64 (common.metal).
//
// Buffers (in order): out, x, cos, sin (named cos_t, sin_t), then int64
// n_rows, n_items, heads, seq, dim, rot, x strides (b, h, s, d), cos strides
// (b, h, s, d), sin strides (b, h, s, d), all in elements.
template <typename T>
kernel void rope(device T* out, const device T* x, const device T* cos_t, const device T* sin_t, constant long& n_rows,
                 constant long& n_items, constant long& heads, constant long& seq, constant long& dim,
                 constant long& rot, constant long& x_sb, constant long& x_sh, constant long& x_ss, constant long& x_sd,
                 constant long& c_sb, constant long& c_sh, constant long& c_ss, constant long& c_sd,
                 constant long& s_sb, constant long& s_sh, constant long& s_ss, constant long& s_sd,
                 uint gid [[thread_position_in_grid]]) {
  // The grid has n_rows * n_items < 2^32 threads (the host checks), so the (row, item) and
  // (b, h, s) splits are 32-bit: three divides, where 64-bit math took five.
  const uint items = uint(n_items), s_len = uint(seq);
  const uint row = gid / items;
  const idx_t t = gid - row * items;
  if (row >= uint(n_rows)) {
    return;
  }
  const uint bh = row / s_len;
  const uint s = row - bh * s_len;
  const uint b = bh / uint(heads);
  const uint h = bh - b * uint(heads);
  const device T* xr = x + long(b) * x_sb + long(h) * x_sh + long(s) * x_ss;
  device T* yr = out + long(row) * dim;
  const idx_t half_rot = idx_t(rot) / 2;
  const idx_t xd = idx_t(x_sd);
  if (t < half_rot) {
    const device T* cr = cos_t + long(b) * c_sb + long(h) * c_sh + long(s) * c_ss;
    const device T* sr = sin_t + long(b) * s_sb + long(h) * s_sh + long(s) * s_ss;
    const idx_t cd = idx_t(c_sd), sd = idx_t(s_sd);
#if INTERLEAVED
    const idx_t i0 = 2 * t;
    const idx_t i1 = 2 * t + 1;
#else
    const idx_t i0 = t;
    const idx_t i1 = t + half_rot;
#endif
    const float x0 = float(xr[i0 * xd]);
    const float x1 = float(xr[i1 * xd]);
    yr[i0] = T(x0 * float(cr[i0 * cd]) - x1 * float(sr[i0 * sd]));
    yr[i1] = T(x1 * float(cr[i1 * cd]) + x0 * float(sr[i1 * sd]));
  } else {
    const idx_t d = idx_t(rot) + (t - half_rot);
    yr[d] = xr[d * xd];
  }
}

INSTANTIATE_KERNEL(rope)
