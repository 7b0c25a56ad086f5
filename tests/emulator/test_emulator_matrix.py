"""simdgroup_matrix on the emulator: loads, stores and products against torch.matmul.

The lane layout (which two elements each lane's thread_elements() holds) is the one MLX's steel
GEMM relies on (mlx/backend/metal/kernels/steel/gemm/mma.h); kernels that fill matrices
through thread_elements() are only right if the emulator uses it too.
"""

import pytest
import torch
from helpers import nan_like

from mps_inductor_ext.shaders import KernelError

SOURCE = """
#include <metal_stdlib>
#include <metal_simdgroup_matrix>
using namespace metal;

// Every load/store form on one 8x8 problem; see test_matrix_ops for the output layout.
template <typename T>
kernel void matrix_ops(device T* out [[buffer(0)]], device const T* a [[buffer(1)]],
                       device const T* b [[buffer(2)]], device const T* c [[buffer(3)]],
                       device const T* big [[buffer(4)]], ushort lane [[thread_index_in_simdgroup]]) {
  threadgroup T tb[64];
  threadgroup T tout[64];
  simdgroup_matrix<T, 8, 8> A, B, C, D;
  simdgroup_load(A, a);
  simdgroup_load(B, b, 8);
  simdgroup_load(C, c, 8, ulong2(0), false);
  simdgroup_multiply_accumulate(D, A, B, C);
  simdgroup_store(D, out);
  simdgroup_multiply(D, A, B);
  simdgroup_store(D, out + 64, 8);
  simdgroup_load(D, a, 8, ulong2(0), true);
  simdgroup_multiply(D, D, B);
  simdgroup_store(D, out + 128);
  simdgroup_load(D, big, 16, ulong2(8, 4));
  simdgroup_store(D, out + 192, 16, ulong2(4, 8));
  simdgroup_store(A, out + 448, 8, ulong2(0), true);
  for (uint i = lane; i < 64; i += 32) {
    tb[i] = b[i];
  }
  simdgroup_barrier(mem_flags::mem_threadgroup);
  simdgroup_load(B, tb, 8, 0, true);
  simdgroup_multiply_accumulate(C, A, B, C);
  simdgroup_store(C, tout);
  simdgroup_barrier(mem_flags::mem_threadgroup);
  for (uint i = lane; i < 64; i += 32) {
    out[512 + i] = tout[i];
  }
}
template [[host_name("matrix_ops_float")]] [[kernel]] decltype(matrix_ops<float>) matrix_ops<float>;
template [[host_name("matrix_ops_half")]] [[kernel]] decltype(matrix_ops<half>) matrix_ops<half>;

// out = a @ b for 32x32 inputs: four SIMD-groups, each a 16x16 quadrant of 2x2 tiles,
// accumulated in float; with TransB, b holds B transposed.
template <typename T, bool TransB>
kernel void tiled_matmul(device float* out [[buffer(0)]], device const T* a [[buffer(1)]],
                         device const T* b [[buffer(2)]], ushort sg [[simdgroup_index_in_threadgroup]]) {
  const uint r0 = (sg / 2) * 16, c0 = (sg % 2) * 16;
  simdgroup_float8x8 acc[2][2];
  for (int i = 0; i < 2; ++i) {
    for (int j = 0; j < 2; ++j) {
      acc[i][j] = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);
    }
  }
  for (uint k = 0; k < 32; k += 8) {
    simdgroup_matrix<T, 8, 8> A[2], B[2];
    for (int i = 0; i < 2; ++i) {
      simdgroup_load(A[i], a, 32, ulong2(k, r0 + 8 * i));
    }
    for (int j = 0; j < 2; ++j) {
      if (TransB) {
        simdgroup_load(B[j], b + (c0 + 8 * j) * 32 + k, 32, ulong2(0), true);
      } else {
        simdgroup_load(B[j], b, 32, ulong2(c0 + 8 * j, k));
      }
    }
    for (int i = 0; i < 2; ++i) {
      for (int j = 0; j < 2; ++j) {
        simdgroup_multiply_accumulate(acc[i][j], A[i], B[j], acc[i][j]);
      }
    }
  }
  for (int i = 0; i < 2; ++i) {
    for (int j = 0; j < 2; ++j) {
      simdgroup_store(acc[i][j], out, 32, ulong2(c0 + 8 * j, r0 + 8 * i));
    }
  }
}
template [[host_name("tiled_float")]] [[kernel]] decltype(tiled_matmul<float, false>) tiled_matmul<float, false>;
template [[host_name("tiled_float_tb")]] [[kernel]] decltype(tiled_matmul<float, true>) tiled_matmul<float, true>;
template [[host_name("tiled_half")]] [[kernel]] decltype(tiled_matmul<half, false>) tiled_matmul<half, false>;
template [[host_name("tiled_half_tb")]] [[kernel]] decltype(tiled_matmul<half, true>) tiled_matmul<half, true>;
template [[host_name("tiled_bfloat")]] [[kernel]] decltype(tiled_matmul<bfloat, false>) tiled_matmul<bfloat, false>;

// Row 0: each lane's thread_elements() after a load. Row 1: a matrix built from lanes' own
// thread_elements(). Row 2: a loaded matrix that lane 5 then edits, times the identity.
// Row 3: make_filled_simdgroup_matrix. Row 4: a matrix never initialized.
kernel void ownership(device float* out [[buffer(0)]], device const float* a [[buffer(1)]],
                      ushort lane [[thread_index_in_simdgroup]]) {
  simdgroup_float8x8 A, M, I(1.0f), D, U;
  simdgroup_load(A, a);
  out[2 * lane] = A.thread_elements()[0];
  out[2 * lane + 1] = A.thread_elements()[1];
  M.thread_elements() = float2(2 * lane, 2 * lane + 1);
  simdgroup_store(M, out + 64);
  if (lane == 5) {
    A.thread_elements()[1] += 100.0f;
  }
  simdgroup_multiply(D, A, I);
  simdgroup_store(D, out + 128);
  simdgroup_store(make_filled_simdgroup_matrix<float, 8, 8>(3.5f), out + 192);
  simdgroup_store(U, out + 256);
}

kernel void divergent(device float* out [[buffer(0)]], ushort lane [[thread_index_in_simdgroup]]) {
  simdgroup_float8x8 A = make_filled_simdgroup_matrix<float, 8, 8>(1.0f);
  if (lane < 16) {
    simdgroup_store(A, out);
  }
}
kernel void any_store(device float* out [[buffer(0)]]) {
  simdgroup_store(make_filled_simdgroup_matrix<float, 8, 8>(1.0f), out);
}
kernel void divergent_multiply(device float* out [[buffer(0)]], ushort lane [[thread_index_in_simdgroup]]) {
  simdgroup_float8x8 A = make_filled_simdgroup_matrix<float, 8, 8>(1.0f), D;
  if (lane != 31) {
    simdgroup_multiply(D, A, A);
  }
  out[lane] = 0.0f;
}
kernel void pointer_not_uniform(device float* out [[buffer(0)]], ushort lane [[thread_index_in_simdgroup]]) {
  simdgroup_float8x8 A;
  simdgroup_load(A, out + (lane & 1));
}
kernel void stride_not_uniform(device float* out [[buffer(0)]], ushort lane [[thread_index_in_simdgroup]]) {
  simdgroup_float8x8 A = make_filled_simdgroup_matrix<float, 8, 8>(1.0f);
  simdgroup_store(A, out, 8 + 8 * (lane / 16));
}
kernel void origin_not_uniform(device float* out [[buffer(0)]], ushort lane [[thread_index_in_simdgroup]]) {
  simdgroup_float8x8 A;
  simdgroup_load(A, out, 16, ulong2(lane == 9 ? 8 : 0, 0));
}
kernel void transpose_not_uniform(device float* out [[buffer(0)]], ushort lane [[thread_index_in_simdgroup]]) {
  simdgroup_float8x8 A;
  simdgroup_load(A, out, 8, ulong2(0), lane == 0);
}
kernel void transposed_with_origin(device float* out [[buffer(0)]]) {
  simdgroup_float8x8 A;
  simdgroup_load(A, out, 16, ulong2(8, 0), true);
}
"""


def owner_coords() -> torch.Tensor:
    """(row, col) of the two elements each lane owns, from MLX's formula: shape (32, 2, 2)."""
    lane = torch.arange(32)
    qid = lane // 4
    row = (qid & 4) + (lane // 2) % 4
    col = (qid & 2) * 2 + (lane % 2) * 2
    return torch.stack([torch.stack([row, col], -1), torch.stack([row, col + 1], -1)], 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_matrix_ops(emulate, dtype):
    g = torch.Generator().manual_seed(0)
    a, b, c = (torch.randn(8, 8, generator=g).to(dtype) for _ in range(3))
    big = torch.randn(16, 16, generator=g).to(dtype)
    out = nan_like(torch.empty(576, dtype=dtype))
    name = {torch.float32: "float", torch.float16: "half"}[dtype]
    getattr(emulate(SOURCE), f"matrix_ops_{name}")(out, a, b, c, big, threads=32, group_size=32)

    A, B, C = a.double(), b.double(), c.double()
    region = torch.full((16, 16), float("nan"), dtype=torch.float64)
    region[8:16, 4:12] = big[4:12, 8:16].double()  # loaded at origin (x=8, y=4), stored at (x=4, y=8)
    expected = [A @ B + C, A @ B, A.T @ B, region, A.T, A @ B.T + C]
    ref = torch.cat([e.flatten() for e in expected])
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-3, atol=1e-2)
    torch.testing.assert_close(out.double(), ref, equal_nan=True, **tol)


@pytest.mark.parametrize(
    "kernel,dtype,trans_b",
    [
        ("tiled_float", torch.float32, False),
        ("tiled_float_tb", torch.float32, True),
        ("tiled_half", torch.float16, False),
        ("tiled_half_tb", torch.float16, True),
        ("tiled_bfloat", torch.bfloat16, False),
    ],
)
def test_tiled_matmul_32x32(emulate, kernel, dtype, trans_b):
    g = torch.Generator().manual_seed(1)
    a, b = (torch.randn(32, 32, generator=g).to(dtype) for _ in range(2))
    out = torch.full((32, 32), float("nan"))
    getattr(emulate(SOURCE), kernel)(out, a, b.T.contiguous() if trans_b else b, threads=128, group_size=128)
    # Inputs of half or bfloat multiply exactly in float; only the summation order differs.
    torch.testing.assert_close(out, torch.matmul(a.double(), b.double()).float(), rtol=1e-5, atol=1e-4)


def test_thread_elements_ownership(emulate):
    a = torch.randn(8, 8, generator=torch.Generator().manual_seed(2))
    out = torch.full((5, 64), float("nan"))
    emulate(SOURCE).ownership(out, a, threads=32, group_size=32)
    rc = owner_coords()
    assert len({tuple(p) for p in rc.reshape(-1, 2).tolist()}) == 64, "each element has one owner"
    torch.testing.assert_close(out[0].view(32, 2), a[rc[..., 0], rc[..., 1]])
    built = torch.empty(8, 8)
    built[rc[..., 0], rc[..., 1]] = torch.arange(64.0).view(32, 2)
    torch.testing.assert_close(out[1].view(8, 8), built)
    edited = a.clone()
    edited[rc[5, 1, 0], rc[5, 1, 1]] += 100.0
    torch.testing.assert_close(out[2].view(8, 8), edited)
    torch.testing.assert_close(out[3], torch.full((64,), 3.5))
    assert out[4].isnan().all(), "a matrix never initialized must read as NaN"


@pytest.mark.parametrize(
    "kernel,threads,match",
    [
        ("divergent", 32, "reached by 16 of 32 lanes"),
        ("divergent_multiply", 32, "reached by 31 of 32 lanes"),
        ("any_store", 48, "partial SIMD-group of 16 lanes"),
        ("pointer_not_uniform", 32, "pointer must be uniform"),
        ("stride_not_uniform", 32, "elements_per_row must be uniform"),
        ("origin_not_uniform", 32, "matrix_origin must be uniform"),
        ("transpose_not_uniform", 32, "transpose_matrix must be uniform"),
        ("transposed_with_origin", 32, "nonzero matrix_origin"),
    ],
)
def test_matrix_misuse_is_an_error(emulate, kernel, threads, match):
    """All 32 lanes must take part, with the arguments Metal requires to be uniform."""
    out = torch.zeros(256)
    with pytest.raises(KernelError, match=match):
        getattr(emulate(SOURCE), kernel)(out, threads=threads, group_size=threads)
    assert (out == 0).all()


@pytest.mark.parametrize(
    "param,call",
    [
        ("constant float* p", "simdgroup_load(m, p);"),  # Metal loads from device or threadgroup only
        ("device half* p", "simdgroup_load(m, p);"),  # element types must match
    ],
)
def test_matrix_type_errors_do_not_compile(emulate, param, call):
    src = f"""
#include <metal_stdlib>
using namespace metal;
kernel void k({param} [[buffer(0)]]) {{
  simdgroup_float8x8 m;
  {call}
}}
"""
    with pytest.raises(SyntaxError, match="no matching function"):
        emulate(src)
