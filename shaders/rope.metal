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
// Specialized by the host (ops/rope.py): INTERLEAVED 0 or 1.
//
// Buffers (in order): out, x, cos, sin (named cos_t, sin_t), then int64
// n_rows, n_items, heads, seq, dim, rot, x strides (b, h, s, d), cos strides
// (b, h, s, d), sin strides (b, h, s, d), all in elements.
template <typename T>
kernel void rope(
    device T* out, const device T* x, const device T* cos_t, const device T* sin_t,
    constant long& n_rows, constant long& n_items, constant long& heads, constant long& seq,
    constant long& dim, constant long& rot,
    constant long& x_sb, constant long& x_sh, constant long& x_ss, constant long& x_sd,
    constant long& c_sb, constant long& c_sh, constant long& c_ss, constant long& c_sd,
    constant long& s_sb, constant long& s_sh, constant long& s_ss, constant long& s_sd,
    uint gid [[thread_position_in_grid]]) {
  const long row = long(gid) / n_items;
  const long t = long(gid) % n_items;
  if (row >= n_rows) {
    return;
  }
  const long b = row / (heads * seq);
  const long h = (row / seq) % heads;
  const long s = row % seq;
  const device T* xr = x + b * x_sb + h * x_sh + s * x_ss;
  device T* yr = out + row * dim;
  const long half_rot = rot / 2;
  if (t < half_rot) {
    const device T* cr = cos_t + b * c_sb + h * c_sh + s * c_ss;
    const device T* sr = sin_t + b * s_sb + h * s_sh + s * s_ss;
#if INTERLEAVED
    const long i0 = 2 * t;
    const long i1 = 2 * t + 1;
#else
    const long i0 = t;
    const long i1 = t + half_rot;
#endif
    const float x0 = float(xr[i0 * x_sd]);
    const float x1 = float(xr[i1 * x_sd]);
    yr[i0] = T(x0 * float(cr[i0 * c_sd]) - x1 * float(sr[i0 * s_sd]));
    yr[i1] = T(x1 * float(cr[i1 * c_sd]) + x0 * float(sr[i1 * s_sd]));
  } else {
    const long d = rot + (t - half_rot);
    yr[d] = xr[d * x_sd];
  }
}

INSTANTIATE_KERNEL(rope)
