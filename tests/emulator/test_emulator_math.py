"""metal_stdlib math on the emulator, for float, half and bfloat scalars and vectors.

Each kernel writes one column per expression; the expected column is the same function in
PyTorch on tensors of the kernel's type (PyTorch's CPU half and bfloat ops compute in float
and round each result, as Metal does), except fma and mix, which round once.
"""

import math

import pytest
import torch

HEADER = "#include <metal_stdlib>\nusing namespace metal;\n"


def _round_away(x):
    """Metal's round(): halfway cases away from zero (torch.round goes to even)."""
    return torch.sign(x) * torch.floor(x.abs() + 0.5)


# (Metal expression in v, y, z, the same in torch on tensors of the kernel's type)
UNARY = [
    ("exp(v)", lambda v, y, z: v.exp()),
    ("fast::exp(v)", lambda v, y, z: v.exp()),
    ("precise::exp(v)", lambda v, y, z: v.exp()),
    ("metal::exp(v)", lambda v, y, z: v.exp()),
    ("metal::precise::log(abs(v) + T(0.5))", lambda v, y, z: (v.abs() + 0.5).log()),
    ("metal::fast::sqrt(abs(v))", lambda v, y, z: v.abs().sqrt()),
    ("rsqrt(abs(v) + T(0.25))", lambda v, y, z: (v.abs() + 0.25).rsqrt()),
    ("tanh(v)", lambda v, y, z: v.tanh()),
    ("fast::tanh(v)", lambda v, y, z: v.tanh()),
    ("asinh(v)", lambda v, y, z: v.float().asinh()),
    ("pow(abs(v) + T(0.5), y)", lambda v, y, z: (v.abs() + 0.5).pow(y)),
    ("fast::pow(abs(v) + T(0.5), y)", lambda v, y, z: (v.abs() + 0.5).pow(y)),
    ("fma(v, y, z)", lambda v, y, z: v.float() * y.float() + z.float()),
    ("clamp(v, T(-1), T(1))", lambda v, y, z: v.clamp(-1, 1)),
    ("mix(v, y, T(0.25))", lambda v, y, z: v.float() + (y.float() - v.float()) * 0.25),
    ("max(v, y)", lambda v, y, z: torch.maximum(v, y)),
    ("metal::min(v, y)", lambda v, y, z: torch.minimum(v, y)),
    ("precise::max(v, y)", lambda v, y, z: torch.maximum(v, y)),
    ("abs(v)", lambda v, y, z: v.abs()),
    ("floor(v)", lambda v, y, z: v.floor()),
    ("ceil(v)", lambda v, y, z: v.ceil()),
    ("round(v * T(2))", lambda v, y, z: _round_away(v * 2)),
    ("select(v, y, v > y)", lambda v, y, z: torch.where(v > y, y, v)),
]


def _scalar_source(exprs):
    body = "\n".join(f"  o[{k}] = {e};" for k, (e, _) in enumerate(exprs))
    return f"""
template <typename T>
kernel void f(device const T* x [[buffer(0)]], device T* out [[buffer(1)]], uint i [[thread_position_in_grid]]) {{
  T v = x[3 * i], y = x[3 * i + 1], z = x[3 * i + 2];
  device T* o = out + {len(exprs)} * i;
{body}
}}
template <typename T>
kernel void f4(device const vec<T, 4>* x [[buffer(0)]], device vec<T, 4>* out [[buffer(1)]],
               uint i [[thread_position_in_grid]]) {{
  vec<T, 4> v = x[3 * i], y = x[3 * i + 1], z = x[3 * i + 2];
  device vec<T, 4>* o = out + {len(exprs)} * i;
{body.replace("T(", "vec<T, 4>(")}
}}
"""


DTYPES = {"float": torch.float32, "half": torch.float16, "bfloat": torch.bfloat16}
SOURCE = HEADER + _scalar_source(UNARY) + "".join(
    f'template [[host_name("f_{n}")]] [[kernel]] decltype(f<{n}>) f<{n}>;\n'
    f'template [[host_name("f4_{n}")]] [[kernel]] decltype(f4<{n}>) f4<{n}>;\n'
    for n in DTYPES
)


@pytest.mark.parametrize("name", list(DTYPES))
def test_float_functions(emulate, name):
    """Every function, in every namespace form, on scalars and 4-vectors of the type."""
    dtype = DTYPES[name]
    lib = emulate(SOURCE)
    g = torch.Generator().manual_seed(0)
    n = 64
    x = (torch.randn(n, 3, generator=g) * 2).to(dtype)
    x[:4, 0] = torch.tensor([0.25, -1.25, 2.25, -0.75])  # halfway cases for round(v * 2)
    v, y, z = x.unbind(1)
    ref = torch.stack([fn(v, y, z).to(dtype) for _, fn in UNARY], 1)
    tol = {torch.float32: {}, torch.float16: dict(rtol=2e-3, atol=1e-5), torch.bfloat16: dict(rtol=1.6e-2, atol=1e-5)}
    out = torch.full((n, len(UNARY)), float("nan"), dtype=dtype)
    getattr(lib, f"f_{name}")(x, out, threads=n)
    for k, (expr, _) in enumerate(UNARY):
        torch.testing.assert_close(out[:, k], ref[:, k], **tol[dtype], msg=lambda m, e=expr: f"{e}: {m}")
    # the same columns, four lanes at a time
    out4 = torch.full((n // 4, len(UNARY), 4), float("nan"), dtype=dtype)
    x4 = x.reshape(n // 4, 4, 3).transpose(1, 2).contiguous()  # lane j of vector k is x[4 i + j, k]
    getattr(lib, f"f4_{name}")(x4, out4, threads=n // 4)
    for k, (expr, _) in enumerate(UNARY):
        torch.testing.assert_close(out4[:, k].reshape(-1), ref[:, k], **tol[dtype], msg=lambda m, e=expr: f"{e}: {m}")


def test_predicates_dot_and_reductions(emulate):
    """isnan/isinf (scalar and vector), dot, all/any over vector comparisons."""
    lib = emulate(HEADER + r"""
kernel void k(device const float4* x [[buffer(0)]], device float* o [[buffer(1)]], device half4* h [[buffer(2)]],
              uint i [[thread_position_in_grid]]) {
  float4 v = x[i];
  device float* r = o + 8 * i;
  r[0] = isnan(v.x);
  r[1] = isinf(v.y);
  r[2] = float(all(isnan(v) == bool4(false)));   // bool4 == bool4 lane-wise, reduced
  r[3] = float(any(isinf(v)));
  r[4] = dot(select(v, float4(0), isnan(v) || isinf(v)), float4(1, 2, 3, 4));
  r[5] = all(v > -100) ? 1.0 : 0.0;
  r[6] = any(v < 0) ? 1.0 : 0.0;
  r[7] = float(dot(h[i], half4(2)));
}
""")
    inf, nan = float("inf"), float("nan")
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0], [nan, -inf, 1.0, -2.0], [0.5, inf, nan, 7.0], [-1.0, 0.0, -300.0, 1.0]])
    h = (torch.arange(16.0).reshape(4, 4) / 4).half()
    o = torch.full((4, 8), nan)
    lib.k(x, o, h, threads=4)
    finite = torch.where(x.isfinite(), x, 0.0)
    ref = torch.stack([x[:, 0].isnan(), x[:, 1].isinf(), ~x.isnan().any(1), x.isinf().any(1),
                       finite @ torch.tensor([1.0, 2, 3, 4]), (x > -100).all(1), (x < 0).any(1),
                       h.float().sum(1) * 2], 1).float()
    torch.testing.assert_close(o, ref)


def test_integer_functions(emulate):
    """min/max/clamp/abs on signed and unsigned integers compare as integers."""
    lib = emulate(HEADER + r"""
kernel void k(device const int* a [[buffer(0)]], device const int* b [[buffer(1)]], device int* o [[buffer(2)]],
              device uint* u [[buffer(3)]], device int4* v [[buffer(4)]], uint i [[thread_position_in_grid]]) {
  o[4 * i] = max(a[i], b[i]);
  o[4 * i + 1] = metal::min(a[i], b[i]);
  o[4 * i + 2] = clamp(a[i], -5, 5);
  o[4 * i + 3] = abs(a[i]);
  u[i] = max(uint(a[i]), uint(b[i]));     // unsigned: negative ints are huge
  v[i] = max(int4(a[i], b[i], -a[i], 0), int4(0)) + min(int4(a[i]), int4(b[i]));
}
""")
    g = torch.Generator().manual_seed(4)
    a = torch.randint(-1000, 1000, (50,), generator=g, dtype=torch.int32)
    b = torch.randint(-1000, 1000, (50,), generator=g, dtype=torch.int32)
    o = torch.full((50, 4), -7, dtype=torch.int32)
    u = torch.zeros(50, dtype=torch.int32)
    v = torch.full((50, 4), -7, dtype=torch.int32)
    lib.k(a, b, o, u.view(torch.uint32), v, threads=50)
    torch.testing.assert_close(o, torch.stack([torch.maximum(a, b), torch.minimum(a, b), a.clamp(-5, 5), a.abs()], 1))
    ua, ub = a.long() % 2**32, b.long() % 2**32
    torch.testing.assert_close(u.long() % 2**32, torch.maximum(ua, ub))
    lanes = torch.stack([a, b, -a, torch.zeros_like(a)], 1).clamp(min=0) + torch.minimum(a, b)[:, None]
    torch.testing.assert_close(v, lanes)


def test_as_type(emulate):
    """as_type reinterprets bits, between scalars and vectors of the same size."""
    lib = emulate(HEADER + r"""
kernel void k(device const float* f [[buffer(0)]], device const half2* h [[buffer(1)]],
              device uint* u [[buffer(2)]], device float* back [[buffer(3)]], device ushort* hs [[buffer(4)]],
              device uint* hu [[buffer(5)]], device bfloat* bf [[buffer(6)]], uint i [[thread_position_in_grid]]) {
  u[i] = as_type<uint>(f[i]);
  back[i] = as_type<float>(as_type<uint>(f[i]) ^ 0x80000000u);   // flips the sign
  hs[i] = as_type<ushort>(h[i].x);
  hu[i] = as_type<uint>(h[i]);
  bf[i] = as_type<bfloat>(ushort(as_type<uint>(f[i]) >> 16));    // truncating float -> bfloat
}
""")
    g = torch.Generator().manual_seed(5)
    f = torch.randn(16, generator=g)
    h = torch.randn(16, 2, generator=g).half()
    u, hu = torch.zeros(16, dtype=torch.int32), torch.zeros(16, dtype=torch.int32)
    back, hs = torch.full((16,), float("nan")), torch.zeros(16, dtype=torch.int16)
    bf = torch.zeros(16, dtype=torch.bfloat16)
    lib.k(f, h, u.view(torch.uint32), back, hs.view(torch.uint16), hu.view(torch.uint32), bf, threads=16)
    assert torch.equal(u, f.view(torch.int32))
    assert torch.equal(back, -f)
    assert torch.equal(hs, h[:, 0].contiguous().view(torch.int16))
    assert torch.equal(hu, h.view(torch.int32).reshape(16))
    assert torch.equal(bf.view(torch.int16), (f.view(torch.int32) >> 16).to(torch.int16))


def test_as_type_of_different_sizes_does_not_compile(emulate):
    with pytest.raises(SyntaxError):
        emulate(HEADER + "kernel void k(device uint* o, device const half* h, uint i [[thread_position_in_grid]]) "
                         "{ o[i] = as_type<uint>(h[i]); }")


def test_numeric_limits(emulate):
    lib = emulate(HEADER + r"""
template <typename T>
void put(device float* o, int k) {
  o[4 * k] = float(numeric_limits<T>::max());
  o[4 * k + 1] = float(numeric_limits<T>::lowest());
  o[4 * k + 2] = float(numeric_limits<T>::infinity());
  o[4 * k + 3] = float(numeric_limits<T>::epsilon());
}
kernel void k(device float* o [[buffer(0)]], device int* n [[buffer(1)]], uint i [[thread_position_in_grid]]) {
  put<float>(o, 0);
  put<half>(o, 1);
  put<bfloat>(o, 2);
  n[0] = numeric_limits<int>::max();
  n[1] = numeric_limits<int>::lowest();
  n[2] = numeric_limits<short>::lowest();
  n[3] = numeric_limits<uchar>::max();
}
""")
    o = torch.full((3, 4), float("nan"))
    n = torch.zeros(4, dtype=torch.int32)
    lib.k(o, n, threads=1)
    ref = [[torch.finfo(d).max, torch.finfo(d).min, math.inf, torch.finfo(d).eps]
           for d in (torch.float32, torch.float16, torch.bfloat16)]
    torch.testing.assert_close(o, torch.tensor(ref), rtol=0, atol=0)
    assert n.tolist() == [2**31 - 1, -(2**31), -(2**15), 255]
