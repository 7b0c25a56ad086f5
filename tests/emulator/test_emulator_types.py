"""The emulator's Metal language surface: kernel forms, address spaces, scalar and vector types.

Each test compiles one source holding several kernels (a compile costs about half a second)
and checks results against values computed independently in PyTorch.
"""

import pytest
import torch
from helpers import nan_like

HEADER = "#include <metal_stdlib>\nusing namespace metal;\n"

KERNEL_FORMS = HEADER + r"""
kernel void plain(device float* o [[buffer(0)]], uint i [[thread_position_in_grid]]) { o[i] = 1; }
[[kernel]] void attributed(device float* o [[buffer(0)]], uint i [[thread_position_in_grid]]) { o[i] = 2; }

template <typename T>
[[kernel]] void fill(device T* o [[buffer(0)]], uint i [[thread_position_in_grid]]) { o[i] = T(i) + T(0.5); }
template [[host_name("fill_float")]] [[kernel]] void fill<float>(device float* o [[buffer(0)]],
                                                                 uint i [[thread_position_in_grid]]);
template [[host_name("fill_half")]] [[kernel]] decltype(fill<half>) fill<half>;
#define instantiate(name, T) template [[host_name(name)]] [[kernel]] decltype(fill<T>) fill<T>;
instantiate("fill_bfloat", bfloat)
#define instantiate_joined(T) template [[host_name("fill_" #T "_joined")]] [[kernel]] decltype(fill<T>) fill<T>;
instantiate_joined(int)

namespace ns {
template <typename T, int N>
kernel void scaled(device T* o [[buffer(0)]], uint i [[thread_position_in_grid]]) { o[i] = T(i * N); }
}  // namespace ns
template [[host_name("scaled_int_3")]] [[kernel]] decltype(ns::scaled<int, 3>) ns::scaled<int, 3>;
template [[host_name("scaled_float_5")]] [[kernel]] void ns::scaled<float, 5>(device float*, uint);
"""


def test_kernel_forms_and_instantiations(emulate):
    """Plain, [[kernel]], and template kernels instantiated the MLX and PyTorch ways."""
    lib = emulate(KERNEL_FORMS)
    assert sorted(dir(lib)) == sorted(
        ["plain", "attributed", "fill_float", "fill_half", "fill_bfloat", "fill_int_joined", "scaled_int_3",
         "scaled_float_5"]
    )
    i = torch.arange(10)
    for name, value in (("plain", 1.0), ("attributed", 2.0)):
        out = torch.full((10,), float("nan"))
        getattr(lib, name)(out)
        torch.testing.assert_close(out, torch.full((10,), value))
    for dtype, name in ((torch.float32, "float"), (torch.float16, "half"), (torch.bfloat16, "bfloat")):
        out = torch.full((10,), float("nan"), dtype=dtype)
        getattr(lib, f"fill_{name}")(out)
        torch.testing.assert_close(out, (i + 0.5).to(dtype))
    out = torch.full((10,), -1, dtype=torch.int32)
    lib.scaled_int_3(out)
    torch.testing.assert_close(out, (i * 3).int())
    out = torch.full((10,), float("nan"))
    lib.scaled_float_5(out)
    torch.testing.assert_close(out, (i * 5).float())


ADDRESS_SPACES = HEADER + r"""
constant float table[] = {1.5, -2.0, 4.25};
constant constexpr int kTable = 3;

// thread: a pointer to the caller's local; device: a pointer into a buffer.
void accumulate(thread float* acc, device const float* x, uint n) {
  for (uint k = 0; k < n; ++k) *acc += x[k];
}
void twice(thread float& v) { v *= 2; }

kernel void consts(device float* o, uint i [[thread_position_in_grid]]) { o[i] = table[i % kTable] * kTable; }

kernel void thread_ptrs(device float* o [[buffer(0)]], device const float* x [[buffer(1)]],
                        constant long& n [[buffer(2)]], uint i [[thread_position_in_grid]]) {
  float acc = 0;
  accumulate(&acc, x + i * n, n);
  twice(acc);
  o[i] = acc;
}

template <typename T>
kernel void reverse(device T* o [[buffer(0)]], device const T* x [[buffer(1)]],
                    uint g [[threadgroup_position_in_grid]], uint t [[thread_position_in_threadgroup]],
                    uint n [[threads_per_threadgroup]]) {
  threadgroup T buf[64];
  threadgroup float grid2d[4][16];
  threadgroup uint count;
  if (t == 0) count = 0;
  threadgroup_barrier(mem_flags::mem_threadgroup);
  buf[t] = x[g * n + t];
  grid2d[t / 16][t % 16] = float(t);
  threadgroup_barrier(mem_flags::mem_threadgroup);
  if (t == n - 1) count = n;
  threadgroup_barrier(mem_flags::mem_threadgroup);
  uint r = n - 1 - t;
  o[g * n + t] = buf[r] + T(grid2d[r / 16][r % 16]) + T(count);
}
template [[host_name("reverse_float")]] [[kernel]] decltype(reverse<float>) reverse<float>;
template [[host_name("reverse_int")]] [[kernel]] decltype(reverse<int>) reverse<int>;
"""


def test_address_spaces(emulate):
    """constant tables, thread pointers to locals, and threadgroup arrays shared by the group."""
    lib = emulate(ADDRESS_SPACES)
    out = torch.full((7,), float("nan"))
    lib.consts(out)
    torch.testing.assert_close(out, torch.tensor([1.5, -2.0, 4.25])[torch.arange(7) % 3] * 3)

    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(0))
    out = torch.full((5,), float("nan"))
    lib.thread_ptrs(out, x, 6)
    torch.testing.assert_close(out, 2 * x.sum(1))

    assert lib.reverse_float.static_thread_group_memory_length == 64 * 4 + 4 * 16 * 4 + 16
    for dtype in (torch.float32, torch.int32):
        x = torch.arange(3 * 48, dtype=dtype).reshape(3, 48) * 7
        out = torch.full_like(x, -1) if dtype == torch.int32 else nan_like(x)
        getattr(lib, f"reverse_{'float' if dtype == torch.float32 else 'int'}")(out, x, threads=144, group_size=48)
        t = torch.arange(48)
        torch.testing.assert_close(out, (x.flip(1) + t.flip(0) + 48).to(dtype))


def test_buffer_indices(emulate):
    """Explicit [[buffer(n)]] in any declaration order binds by index; unmarked buffers take the free ones."""
    lib = emulate(HEADER + r"""
kernel void explicit_order(device const float* b [[buffer(2)]], device float* out [[buffer(0)]],
                           device const float* a [[buffer(1)]], uint i [[thread_position_in_grid]]) {
  out[i] = a[i] * 10 + b[i];
}
kernel void mixed(device const float* a, device float* out [[buffer(0)]], device const float* b,
                  constant long& k [[buffer(3)]], uint i [[thread_position_in_grid]]) {
  out[i] = a[i] * 10 + b[i] + k * 100;
}
""")
    a, b = torch.arange(5.0), torch.arange(5.0) * -1 + 0.5
    out = torch.full((5,), float("nan"))
    lib.explicit_order(out, a, b)
    torch.testing.assert_close(out, a * 10 + b)
    out = torch.full((5,), float("nan"))
    lib.mixed(out, a, b, 4)  # a takes buffer(1), b buffer(2)
    torch.testing.assert_close(out, a * 10 + b + 400)


SCALARS = [
    ("float", torch.float32),
    ("half", torch.float16),
    ("bfloat", torch.bfloat16),
    ("int", torch.int32),
    ("uint", torch.uint32),
    ("short", torch.int16),
    ("ushort", torch.uint16),
    ("char", torch.int8),
    ("uchar", torch.uint8),
    ("long", torch.int64),
    ("ulong", torch.uint64),
    ("bool", torch.bool),
]


def test_scalar_buffers_and_arithmetic(emulate):
    """A buffer of every scalar type: read, compute in the type (wrapping for integers), write."""
    src = HEADER + "\n".join(
        f"kernel void k_{n}(device {n}* o, device const {n}* a, device const {n}* b, "
        f"uint i [[thread_position_in_grid]]) {{ o[i] = {'a[i] != b[i]' if n == 'bool' else 'a[i] * b[i] + a[i]'}; }}"
        for n, _ in SCALARS
    )
    lib = emulate(src)
    g = torch.Generator().manual_seed(1)
    for name, dtype in SCALARS:
        if dtype.is_floating_point:
            a, b = torch.randn(33, generator=g).to(dtype), torch.randn(33, generator=g).to(dtype)
            ref = ((a.float() * b.float()).to(dtype).float() + a.float()).to(dtype)
            out = nan_like(a)
        elif dtype == torch.bool:
            a, b = torch.rand(33, generator=g) < 0.5, torch.rand(33, generator=g) < 0.5
            ref, out = a != b, torch.zeros(33, dtype=torch.bool)
            lib.k_bool(out, a, b)
            assert torch.equal(out, ref)
            out = ~ref
        else:
            info = torch.iinfo(dtype)
            lo, hi = max(info.min, -(2**40)), min(info.max, 2**40)
            a = torch.randint(lo, hi, (33,), generator=g, dtype=torch.int64)
            b = torch.randint(lo, hi, (33,), generator=g, dtype=torch.int64)
            bits, signed = info.bits, info.min < 0

            def wrap(v, bits=bits, signed=signed):  # two's complement wraparound, in Python ints
                v %= 2**bits
                return v - 2**bits if signed and v >= 2 ** (bits - 1) else v

            ref = torch.tensor([wrap(p * q + p) for p, q in zip(a.tolist(), b.tolist(), strict=True)], dtype=dtype)
            a, b = a.to(dtype), b.to(dtype)
            out = torch.full((33,), 7, dtype=dtype)
        getattr(lib, f"k_{name}")(out, a, b)
        assert torch.equal(out.view(torch.uint8), ref.view(torch.uint8)), name


def test_half_and_bfloat_round_after_each_operation(emulate):
    """half(2048) + half(1) is 2048 in half: no excess precision is carried between operations."""
    lib = emulate(HEADER + r"""
kernel void k(device half* h [[buffer(0)]], device bfloat* b [[buffer(1)]], uint i [[thread_position_in_grid]]) {
  half x = 2048;
  half y = x + half(1);
  h[0] = y - x;                 // 0 in half; 1 with float intermediates
  h[1] = half(2048) + half(1);
  h[2] = half(65504) * half(2) / half(4);   // overflows to inf in half
  bfloat p = 256;
  b[0] = (p + bfloat(1)) - p;   // 0 in bfloat
  b[1] = bfloat(1.00390625);    // rounds to nearest even: 1
  b[2] = bfloat(1.01171875);    // 1 + 3 * 2^-8 rounds to even: 1 + 4 * 2^-8
}
""")
    h = torch.full((3,), float("nan"), dtype=torch.float16)
    b = torch.full((3,), float("nan"), dtype=torch.bfloat16)
    lib.k(h, b, threads=1)
    assert h.tolist() == [0.0, 2048.0, float("inf")]
    assert b.tolist() == [0.0, 1.0, torch.tensor(1.01171875).bfloat16().item()]


def test_conversions(emulate):
    """float to int truncates toward zero; int to float and float to half/bfloat round to nearest even."""
    lib = emulate(HEADER + r"""
kernel void k(device const float* x [[buffer(0)]], device int* i32 [[buffer(1)]], device half* h [[buffer(2)]],
              device bfloat* bf [[buffer(3)]], device uchar* u8 [[buffer(4)]], device bool* nz [[buffer(5)]],
              device float* back [[buffer(6)]], uint i [[thread_position_in_grid]]) {
  i32[i] = int(x[i]);
  h[i] = half(x[i]);
  bf[i] = static_cast<bfloat>(x[i]);
  u8[i] = uchar(int(x[i]) & 0xff);
  nz[i] = bool(x[i]);
  back[i] = float(h[i]) + float(bf[i]) + float(i32[i]);
}
""")
    x = torch.cat([torch.tensor([0.0, -0.0, 2.5, -2.5, 0.1, 1e-8, 70000.0, -3.99]),
                   torch.randn(24, generator=torch.Generator().manual_seed(2)) * 100])
    outs = [torch.full((32,), -1, dtype=torch.int32), torch.full((32,), float("nan"), dtype=torch.float16),
            torch.full((32,), float("nan"), dtype=torch.bfloat16), torch.zeros(32, dtype=torch.uint8),
            torch.zeros(32, dtype=torch.bool), nan_like(x)]
    lib.k(x, *outs)
    i32 = x.trunc().int()
    torch.testing.assert_close(outs[0], i32)
    assert torch.equal(outs[1], x.half())
    assert torch.equal(outs[2], x.bfloat16())
    torch.testing.assert_close(outs[3], (i32 & 0xFF).to(torch.uint8))
    assert torch.equal(outs[4], x != 0)
    torch.testing.assert_close(outs[5], x.half().float() + x.bfloat16().float() + i32.float())


VECTORS = HEADER + r"""
kernel void swizzles(device const float4* x [[buffer(0)]], device float4* o [[buffer(1)]],
                     uint i [[thread_position_in_grid]]) {
  float4 v = x[i];
  float4 w = v.wzyx;
  w.xz = float2(v.y, 7.0);         // swizzle assignment
  w.yw = w.wy;                     // swizzle assignment from a swizzle of itself
  float3 t = float3(v.x, v.yz);    // a scalar and a smaller vector
  float2 p = x[i].zw;              // swizzle of a device vector
  o[4 * i + 0] = w;
  o[4 * i + 1] = float4(v.xy, v.zw) + float4(1.0) + float4(t, p.x);
  o[4 * i + 2] = float4(float2(p.y), float2(x[i].xy)) * v - v / 2;
  o[4 * i + 3] = float4(float3(t.zyx), t.x * 2);
}

kernel void converts(device const half4* h [[buffer(0)]], device const float4* f [[buffer(1)]],
                     device float4* o [[buffer(2)]], device int4* n [[buffer(3)]], device char3* c [[buffer(4)]],
                     device vec<float, 4>* o2 [[buffer(5)]], uint i [[thread_position_in_grid]]) {
  half4 hv = h[i];
  o[2 * i] = float4(hv) + static_cast<float4>(h[i]);
  o[2 * i + 1] = float4(hv.xy, float2(h[i].zw));
  n[i] = int4(f[i]) + int4(2, 3, 4, 5) * int4(uint4(1));
  c[i] = char3(n[i].xyz);
  vec<float, 4> g = vec<float, 4>(f[i].x) + f[i];
  o2[i] = g;
}

kernel void casts(device const float* flat [[buffer(0)]], device float* o [[buffer(1)]],
                  uint i [[thread_position_in_grid]]) {
  // a scalar buffer read as vectors through a pointer cast
  float4 v = ((device const float4*)flat)[i];
  device float2* o2 = (device float2*)o;
  o2[2 * i] = v.xy * 2;
  o2[2 * i + 1] = v.zw + v.xy;
}

kernel void bools(device const float4* x [[buffer(0)]], device int4* n [[buffer(1)]],
                  uint i [[thread_position_in_grid]]) {
  bool4 m = bool4(x[i].x > 0, x[i].y, isnan(x[i].z), false);
  m.w = m.x && m.y;
  n[i] = int4(m) + int4(sizeof(bool4), sizeof(bool3), sizeof(bool2), 0) * 10;
}
"""


def test_vectors(emulate):
    """Swizzles, swizzle assignment, constructors from scalars and smaller vectors, conversions."""
    lib = emulate(VECTORS)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(6, 4, generator=g)
    out = torch.full((6, 4, 4), float("nan"))
    lib.swizzles(x, out, threads=6)
    v = x
    w = v.flip(1).clone()
    w[:, 0], w[:, 2] = v[:, 1], 7.0
    w[:, [1, 3]] = w[:, [3, 1]]
    t = v[:, :3]
    p = v[:, 2:]
    torch.testing.assert_close(out[:, 0], w)
    torch.testing.assert_close(out[:, 1], v + 1 + torch.cat([t, p[:, :1]], 1))
    torch.testing.assert_close(out[:, 2], torch.cat([p[:, 1:].expand(6, 2), v[:, :2]], 1) * v - v / 2)
    torch.testing.assert_close(out[:, 3], torch.cat([t.flip(1), t[:, :1] * 2], 1))

    h = (torch.randn(5, 4, generator=g) * 3).half()
    f = torch.randn(5, 4, generator=g) * 50
    o = torch.full((5, 2, 4), float("nan"))
    n = torch.full((5, 4), -99, dtype=torch.int32)
    c = torch.full((5, 4), -99, dtype=torch.int8)  # char3 occupies 4 bytes
    o2 = nan_like(f)
    lib.converts(h, f, o, n, c, o2, threads=5)
    torch.testing.assert_close(o[:, 0], 2 * h.float())
    torch.testing.assert_close(o[:, 1], h.float())
    ni = f.trunc().int() + torch.tensor([2, 3, 4, 5], dtype=torch.int32)
    torch.testing.assert_close(n, ni)
    torch.testing.assert_close(c[:, :3], ni[:, :3].to(torch.int8))
    torch.testing.assert_close(o2, f + f[:, :1])

    flat = torch.randn(12, generator=g)
    o = nan_like(flat)
    lib.casts(flat, o, threads=3)
    q = flat.reshape(3, 4)
    torch.testing.assert_close(o.reshape(3, 4), torch.cat([q[:, :2] * 2, q[:, 2:] + q[:, :2]], 1))

    x = torch.tensor([[1.0, 0.0, float("nan"), 0.0], [-1.0, 2.0, 0.0, 0.0], [3.0, -0.5, 1.0, 9.0]])
    n = torch.full((3, 4), -99, dtype=torch.int32)
    lib.bools(x, n, threads=3)
    m = torch.stack([x[:, 0] > 0, x[:, 1] != 0, x[:, 2].isnan(), (x[:, 0] > 0) & (x[:, 1] != 0)], 1)
    torch.testing.assert_close(n, m.int() + torch.tensor([40, 40, 20, 0], dtype=torch.int32))


@pytest.mark.parametrize(
    "body",
    [
        "float4 v = h[i]; o[i] = v;",  # half4 -> float4 is not implicit in Metal
        "o[i] = h[i] + o[i];",
        "int4 n = o[i]; o[i] = float4(n);",
        "o[i] = float4(h[i].xyz);",  # components must add up to 4
        "o[i] = float4(o[i], 1.0);",
    ],
)
def test_vector_mismatches_do_not_compile(emulate, body):
    """Implicit conversions between vector types, and constructors of the wrong size, are compile errors."""
    with pytest.raises(SyntaxError):
        emulate(HEADER + "kernel void k(device float4* o, device const half4* h, "
                f"uint i [[thread_position_in_grid]]) {{ {body} }}")
