"""torch.mps.compile_shader's convenience call `lib.k(*args, threads=, group_size=, arg_casts=)`.

Expected values come from PyTorch (dtype conversions, index arithmetic), so each test checks
the emulator's binding against torch's own semantics rather than against itself.
"""

import pytest
import torch

from mps_inductor_ext.shaders import compile_shader

SRC = """
#include <metal_stdlib>
using namespace metal;
kernel void from_long(device float* out [[buffer(0)]], constant long& v [[buffer(1)]],
                      uint i [[thread_position_in_grid]]) {
  out[i] = float(v) + i;
}
kernel void from_float(device float* out [[buffer(0)]], constant float& v [[buffer(1)]],
                       uint i [[thread_position_in_grid]]) {
  out[i] = v;
}
kernel void casts(device float* out [[buffer(0)]], constant half& h [[buffer(1)]],
                  constant bfloat& b [[buffer(2)]], constant int& i32 [[buffer(3)]],
                  constant short& i16 [[buffer(4)]], constant char& i8 [[buffer(5)]],
                  constant uchar& u8 [[buffer(6)]], uint i [[thread_position_in_grid]]) {
  if (i == 0) {
    out[0] = h; out[1] = b; out[2] = i32; out[3] = i16; out[4] = i8; out[5] = u8;
  }
}
kernel void halves(device float* out [[buffer(0)]], constant half& a [[buffer(1)]],
                   constant half& b [[buffer(2)]], uint i [[thread_position_in_grid]]) {
  out[i] = i == 0 ? float(a) : float(b);
}
kernel void long_array(device float* out [[buffer(0)]], constant long* a [[buffer(1)]],
                       uint i [[thread_position_in_grid]]) {
  out[i] = a[i];
}
kernel void float_array(device float* out [[buffer(0)]], constant float* a [[buffer(1)]],
                        uint i [[thread_position_in_grid]]) {
  out[i] = a[i];
}
kernel void int_array(device float* out [[buffer(0)]], constant int* a [[buffer(1)]],
                      uint i [[thread_position_in_grid]]) {
  out[i] = a[i];
}
kernel void gather(device float* out [[buffer(0)]], constant float* x [[buffer(1)]],
                   constant long& stride [[buffer(2)]], uint i [[thread_position_in_grid]]) {
  out[i] = x[i * stride];
}
kernel void scatter(device float* out [[buffer(0)]], constant long& stride [[buffer(1)]],
                    uint i [[thread_position_in_grid]]) {
  out[i * stride] = -1.0 - i;
}
kernel void shape(device uint* out [[buffer(0)]], uint i [[thread_position_in_grid]],
                  uint grid [[threads_per_grid]], uint tg [[threads_per_threadgroup]],
                  uint dtg [[dispatch_threads_per_threadgroup]]) {
  out[3 * i] = grid; out[3 * i + 1] = tg; out[3 * i + 2] = dtg;
}
kernel void scalar_first(constant long& v [[buffer(0)]], device float* out [[buffer(1)]],
                         uint i [[thread_position_in_grid]], uint grid [[threads_per_grid]]) {
  out[i] = v + grid;
}
kernel void pos3(device float* out [[buffer(0)]], uint3 p [[thread_position_in_grid]],
                 uint3 g [[threads_per_grid]], uint3 tg [[threads_per_threadgroup]]) {
  uint k = (p.z * g.y + p.y) * g.x + p.x;
  out[2 * k] = p.x + 10 * p.y + 100 * p.z;
  out[2 * k + 1] = tg.x * tg.y * tg.z;
}
"""


@pytest.fixture(scope="module")
def lib():
    return compile_shader(SRC, backend="cpu")


def test_python_int_binds_as_int64(lib):
    out = torch.zeros(4)
    lib.from_long(out, 2**40 + 3)
    expected = torch.tensor(2**40 + 3, dtype=torch.int64).float() + torch.arange(4.0)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


@pytest.mark.parametrize("value", [0.1, 1 / 3, -2.5e-8])
def test_python_float_binds_as_float32(lib, value):
    out = torch.zeros(3)
    lib.from_float(out, value)
    assert torch.equal(out, torch.full((3,), value, dtype=torch.float32))


def test_each_cast_kind_dict_form(lib):
    out = torch.zeros(6)
    values = [0.1, 0.1, -5, -300, -7, 200]
    kinds = ["fp16", "bf16", "int32", "int16", "int8", "uint8"]
    lib.casts(out, *values, arg_casts=dict(zip(range(1, 7), kinds, strict=True)), threads=1)
    dtypes = [torch.float16, torch.bfloat16, torch.int32, torch.int16, torch.int8, torch.uint8]
    # torch reads a Python float as float32 first, then static_casts it (Module.cpp)
    first = [torch.tensor(v, dtype=torch.float32 if isinstance(v, float) else torch.int64) for v in values]
    expected = torch.stack([f.to(dt).float() for f, dt in zip(first, dtypes, strict=True)])
    assert torch.equal(out, expected)


def test_cast_str_form_applies_to_every_scalar_not_tensors(lib):
    """torch applies a str arg_casts to every non-tensor argument and leaves tensors alone."""
    out = torch.zeros(2)
    lib.halves(out, 0.1, 3, arg_casts="fp16")
    assert torch.equal(out, torch.tensor([0.1, 3.0]).half().float())


def test_int_cast_to_half(lib):
    out = torch.zeros(2)
    lib.halves(out, 2049, 7, arg_casts={1: "fp16", 2: "fp16"})
    assert torch.equal(out, torch.tensor([2049.0, 7.0]).half().float())


def test_out_of_range_cast_is_an_error(lib):
    """C++ static_cast would wrap 300 to 44 as int8 (and make 1e6 an fp16 inf): rejected."""
    out = torch.zeros(2)
    with pytest.raises(ValueError, match=r"argument 1 .*1000000.0 does not fit fp16"):
        lib.halves(out, 1e6, 1.0, arg_casts="fp16")
    with pytest.raises(ValueError, match=r"argument 5 .*300 does not fit int8"):
        lib.casts(
            torch.zeros(6),
            0.0,
            0.0,
            0,
            0,
            300,
            0,
            arg_casts={1: "fp16", 2: "bf16", 3: "int32", 4: "int16", 5: "int8", 6: "uint8"},
        )


@pytest.mark.parametrize(
    "kernel,values,casts",
    [
        ("long_array", [3, -4, 2**50, 7], None),
        ("float_array", [0.1, -1e-3, 3.5, 1e30], None),
        ("int_array", [5, -6, 2**31 - 1, -(2**31)], "int32"),
    ],
)
def test_lists_bind_as_arrays(lib, kernel, values, casts):
    out = torch.zeros(4)
    getattr(lib, kernel)(out, values, arg_casts=casts)
    dtype = torch.float32 if isinstance(values[0], float) else torch.int64
    assert torch.equal(out, torch.tensor(values, dtype=dtype).float())


def test_tuple_binds_as_array(lib):
    out = torch.zeros(2)
    lib.long_array(out, (9, -9))
    assert torch.equal(out, torch.tensor([9.0, -9.0]))


def test_tensor_binds_at_its_storage_offset(lib):
    x = torch.randn(20, generator=torch.Generator().manual_seed(0))
    out = torch.zeros(17)
    lib.gather(out, x[3:], 1)
    assert torch.equal(out, x[3:])


def test_non_contiguous_column_is_read_through_its_strides(lib):
    x = torch.randn(6, 5, generator=torch.Generator().manual_seed(1))
    col = x[:, 1]
    assert col.storage_offset() == 1 and col.stride() == (5,)
    out = torch.zeros(6)
    lib.gather(out, col, col.stride(0))
    assert torch.equal(out, x[:, 1])


def test_strided_output_writes_only_its_elements(lib):
    x = torch.zeros(4, 3)
    before = x.clone()
    lib.scatter(x[:, 2], 3, threads=4)
    before[:, 2] = -1.0 - torch.arange(4.0)
    assert torch.equal(x, before)


def _shape(lib, n_out, **kwargs):
    out = torch.zeros(3 * n_out, dtype=torch.int32)
    lib.shape(out, **kwargs)
    return out.view(-1, 3)


@pytest.mark.parametrize("shape", [(7,), (3, 4)])
def test_default_threads_is_first_tensors_numel(lib, shape):
    """Fewer threads would leave NaN behind; more would write out of bounds (an error)."""
    out = torch.full(shape, float("nan"))
    lib.from_long(out, 10)
    assert torch.equal(out.flatten(), 10 + torch.arange(out.numel(), dtype=torch.float32))


def test_default_threads_when_first_argument_is_not_a_tensor(lib):
    out = torch.zeros(10)
    lib.scalar_first(5, out)
    assert torch.equal(out, torch.full((10,), 15.0))


def test_default_group_size_one_dim(lib):
    rows = _shape(lib, 3000, threads=3000)
    grid, tg, dtg = rows.T
    assert (grid == 3000).all() and (dtg == 1024).all()
    # min(3000, 1024) per group; dispatchThreads makes the last group 3000 - 2048 threads
    expected = torch.where(torch.arange(3000) < 2048, 1024, 952).to(torch.int32)
    assert torch.equal(tg, expected)


def test_default_group_size_small_grid(lib):
    rows = _shape(lib, 100, threads=100)
    assert (rows == torch.tensor([100, 100, 100], dtype=torch.int32)).all()


@pytest.mark.parametrize(
    "threads,group",
    [([7], [4]), ([5, 3], [4, 2]), ([5, 3, 2], [4, 2, 2]), ([6, 4, 3], [2, 2, 3]), ([5, 3], None)],
)
def test_multi_dim_dispatch(lib, threads, group):
    """Every position is visited once; group sizes (default (1024, 1, 1) for 2-D and 3-D)
    are clipped at the grid's edge as dispatchThreads does."""
    grid = threads + [1] * (3 - len(threads))
    g = (group or [1024]) + [1] * (3 - len(group or [1024]))
    n = grid[0] * grid[1] * grid[2]
    out = torch.full((2 * n,), float("nan"))
    lib.pos3(out, threads=threads, group_size=group)
    z, y, x = torch.meshgrid(*(torch.arange(d) for d in reversed(grid)), indexing="ij")
    pos = (x + 10 * y + 100 * z).flatten().float()
    sizes = [torch.minimum(torch.tensor(g[d]), grid[d] - (c // g[d]) * g[d]) for d, c in enumerate((x, y, z))]
    group_threads = (sizes[0] * sizes[1] * sizes[2]).flatten().float()
    assert torch.equal(out[0::2], pos)
    assert torch.equal(out[1::2], group_threads)
