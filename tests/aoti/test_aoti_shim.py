"""The emulated AOTInductor MPS shim (mps_inductor_ext.aoti): the aoti_torch_mps_* C functions,
driven through ctypes the way cpp_wrapper_mps.py's generated code drives them, and from C++
translation units that include torch's shim_mps.h (zig's clang, and the compiler AOTInductor uses)."""

import ctypes
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from helpers import nan_like

from mps_inductor_ext.aoti import emulated_shim
from mps_inductor_ext.shaders import runtime
from mps_inductor_ext.shaders.emulator import toolchain

GEN = torch.Generator().manual_seed(0)

SRC = b"""
#include <metal_stdlib>
using namespace metal;
kernel void axpb(device float* out [[buffer(0)]], constant float* x [[buffer(1)]],
                 constant long& a [[buffer(2)]], constant long& b [[buffer(3)]],
                 uint i [[thread_position_in_grid]]) {
  out[i] = a * x[i] + b;
}
// One threadgroup per row: threads stride over the columns, simd_sum, then per-simdgroup partials.
kernel void row_sum(device float* out [[buffer(0)]], constant float* x [[buffer(1)]],
                    constant long& ncols [[buffer(2)]],
                    uint row [[threadgroup_position_in_grid]], uint t [[thread_index_in_threadgroup]],
                    uint n [[threads_per_threadgroup]], uint lane [[thread_index_in_simdgroup]],
                    uint sg [[simdgroup_index_in_threadgroup]]) {
  threadgroup float partial[32];
  float acc = 0.0f;
  for (long c = t; c < ncols; c += n) acc += x[row * ncols + c];
  acc = simd_sum(acc);
  if (lane == 0) partial[sg] = acc;
  threadgroup_barrier(mem_flags::mem_threadgroup);
  if (t == 0) {
    float s = 0.0f;
    for (uint k = 0; k < (n + 31) / 32; ++k) s += partial[k];
    out[row] = s;
  }
}
kernel void grid2(device float* out [[buffer(0)]], constant long& width [[buffer(1)]],
                  uint2 p [[thread_position_in_grid]]) {
  out[p.y * width + p.x] = p.x + 100 * p.y;
}
kernel void overrun(device float* out [[buffer(0)]], uint i [[thread_position_in_grid]]) {
  out[i + 1] = 1.0f;
}
"""

BLOCK = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p)


class Shim:
    """ctypes calls of the shim that record each return code, as a test of the calls inside a block."""

    def __init__(self):
        self.dll = emulated_shim.load()
        self.codes: list[tuple[str, int]] = []

    def __getattr__(self, name: str):
        fn = getattr(self.dll, f"aoti_torch_mps_{name}")

        def call(*args) -> int:
            rc = fn(*args)
            self.codes.append((name, rc))
            return rc

        return call

    def failed(self) -> list[str]:
        return [name for name, rc in self.codes if rc != 0]

    def library(self, source: bytes = SRC) -> ctypes.c_void_p:
        lib = ctypes.c_void_p()
        assert self.dll.aoti_torch_mps_create_shader_library(source, ctypes.byref(lib)) == 0, emulated_shim.last_error()
        return lib

    def kernel(self, lib: ctypes.c_void_p, name: bytes) -> ctypes.c_void_p:
        fn = ctypes.c_void_p()
        rc = self.dll.aoti_torch_mps_get_kernel_function(lib, name, ctypes.byref(fn))
        assert rc == 0, emulated_shim.last_error()
        return fn

    def run(self, fn: ctypes.c_void_p, body, expect_block: bool = True) -> int:
        """aoti_torch_mps_run_command_block with a C callback running body(handle); the block must run
        once with the kernel handle and user_data, or (expect_block=False) not at all."""
        self.codes.clear()
        seen, raised = [], []

        def block(handle, user_data):
            seen.append((handle, user_data))
            try:
                body(handle)
            except BaseException as e:  # ctypes would only print it; re-raised below
                raised.append(e)

        cb = BLOCK(block)
        rc = self.dll.aoti_torch_mps_run_command_block(fn, ctypes.cast(cb, ctypes.c_void_p), ctypes.c_void_p(0xBEEF))
        if raised:
            raise raised[0]
        assert seen == ([(fn.value, 0xBEEF)] if expect_block else [])
        return rc


@pytest.fixture(scope="module")
def shim() -> Shim:
    return Shim()


@pytest.fixture(scope="module")
def lib(shim):
    return shim.library()


def u64s(*values: int):
    return (ctypes.c_uint64 * len(values))(*values)


# -- launches ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("group", [None, 16])
def test_elementwise_dispatch_single(shim, lib, group):
    fn = shim.kernel(lib, b"axpb")
    x = torch.randn(100, generator=GEN)
    out = nan_like(x)
    with emulated_shim.tensor_handles(out, x) as (h_out, h_x):

        def body(h):
            shim.start_encoding(h)
            shim.set_arg_tensor(h, 0, h_out)
            shim.set_arg_tensor(h, 1, h_x)
            shim.set_arg_int(h, 2, 3)
            shim.set_arg_int(h, 3, -2)
            if group is None:
                shim.dispatch_single(h, 100)
            else:
                shim.dispatch_single_with_group_size(h, 100, group)

        assert shim.run(fn, body) == 0, emulated_shim.last_error()
    assert shim.failed() == []
    torch.testing.assert_close(out, 3 * x - 2)


@pytest.mark.parametrize("rows,cols,group", [(5, 100, 64), (3, 1000, 256), (4, 7, 32)])
def test_row_reduction_threadgroup_memory_and_simd_sum(shim, lib, rows, cols, group):
    fn = shim.kernel(lib, b"row_sum")
    x = torch.randn(rows, cols, generator=GEN)
    out = torch.full((rows,), float("nan"))
    with emulated_shim.tensor_handles(out, x) as (h_out, h_x):

        def body(h):
            shim.start_encoding(h)
            shim.set_arg_tensor(h, 0, h_out)
            shim.set_arg_tensor(h, 1, h_x)
            shim.set_arg_int(h, 2, cols)
            shim.dispatch_array_with_group_size(h, u64s(rows * group), 1, u64s(group), 1)

        assert shim.run(fn, body) == 0, emulated_shim.last_error()
    torch.testing.assert_close(out, x.sum(1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("group", [None, (8, 4)])
def test_two_dim_dispatch(shim, lib, group):
    fn = shim.kernel(lib, b"grid2")
    w, h_ = 13, 6
    out = torch.full((h_, w), float("nan"))
    with emulated_shim.tensor_handles(out) as (h_out,):

        def body(h):
            shim.start_encoding(h)
            shim.set_arg_tensor(h, 0, h_out)
            shim.set_arg_int(h, 1, w)
            if group is None:
                shim.dispatch_array(h, u64s(w, h_), 2)
            else:
                shim.dispatch_array_with_group_size(h, u64s(w, h_), 2, u64s(*group), 2)

        assert shim.run(fn, body) == 0, emulated_shim.last_error()
    expected = torch.arange(w).float()[None, :] + 100 * torch.arange(h_).float()[:, None]
    torch.testing.assert_close(out, expected)


def test_tensors_with_storage_offsets(shim, lib):
    fn = shim.kernel(lib, b"axpb")
    n = 20
    x_base = torch.randn(40, generator=GEN)
    out_base = torch.full((40,), float("nan"))
    x, out = x_base[3 : 3 + n], out_base[5 : 5 + n]
    assert x.storage_offset() == 3 and out.storage_offset() == 5
    with emulated_shim.tensor_handles(out, x) as (h_out, h_x):

        def body(h):
            shim.start_encoding(h)
            shim.set_arg_tensor(h, 0, h_out)
            shim.set_arg_tensor(h, 1, h_x)
            shim.set_arg_int(h, 2, 2)
            shim.set_arg_int(h, 3, 1)
            shim.dispatch_single(h, n)

        assert shim.run(fn, body) == 0, emulated_shim.last_error()
    torch.testing.assert_close(out, 2 * x + 1)
    assert out_base[:5].isnan().all() and out_base[5 + n :].isnan().all()


def test_every_launch_goes_through_the_runtime_kernel_function(shim, lib, monkeypatch):
    calls = []
    original = runtime.KernelFunction.dispatch

    def spy(self, length, group_size=None):
        calls.append((self.name, length, group_size))
        return original(self, length, group_size)

    monkeypatch.setattr(runtime.KernelFunction, "dispatch", spy)
    fn = shim.kernel(lib, b"grid2")
    out = torch.full((2, 3), float("nan"))
    with emulated_shim.tensor_handles(out) as (h_out,):

        def body(h):
            shim.start_encoding(h)
            shim.set_arg_tensor(h, 0, h_out)
            shim.set_arg_int(h, 1, 3)
            shim.dispatch_array_with_group_size(h, u64s(3, 2), 2, u64s(3, 1), 2)

        assert shim.run(fn, body) == 0, emulated_shim.last_error()
    assert calls == [("grid2", [3, 2], [3, 1])]


def test_kernel_handles_are_cached_per_name_and_die_with_their_library(shim):
    lib = shim.library()
    fn = shim.kernel(lib, b"axpb")
    assert shim.kernel(lib, b"axpb").value == fn.value
    assert shim.kernel(lib, b"grid2").value != fn.value
    assert shim.dll.aoti_torch_mps_delete_shader_library(lib) == 0
    out = ctypes.c_void_p()
    assert shim.dll.aoti_torch_mps_get_kernel_function(lib, b"axpb", ctypes.byref(out)) != 0
    assert "not a live shader library handle" in emulated_shim.last_error()
    assert shim.run(fn, lambda h: None, expect_block=False) != 0
    assert "not a live kernel function handle" in emulated_shim.last_error()
    assert shim.dll.aoti_torch_mps_delete_shader_library(lib) != 0


# -- errors come back as codes with messages -------------------------------------------------------


def test_compile_error(shim):
    lib = ctypes.c_void_p()
    bad = b"kernel void k(device float* out [[buffer(0)]]) { out[0] = undeclared_name; }"
    assert shim.dll.aoti_torch_mps_create_shader_library(bad, ctypes.byref(lib)) != 0
    message = emulated_shim.last_error()
    assert message.startswith("SyntaxError") and "undeclared_name" in message
    assert lib.value is None


def test_unknown_kernel_name(shim, lib):
    fn = ctypes.c_void_p()
    assert shim.dll.aoti_torch_mps_get_kernel_function(lib, b"generated_kernel", ctypes.byref(fn)) != 0
    assert "no kernel 'generated_kernel'" in emulated_shim.last_error()
    assert "axpb" in emulated_shim.last_error()


@pytest.mark.parametrize("offset", [0, 2])
def test_out_of_bounds_write_fails_and_changes_nothing(shim, lib, offset):
    fn = shim.kernel(lib, b"overrun")
    n = 8
    base = torch.full((n + 4,), float("nan"))
    out = base[offset : offset + n]  # with offset 2 the write lands inside the storage, past the view
    with emulated_shim.tensor_handles(out) as (h_out,):

        def body(h):
            shim.start_encoding(h)
            shim.set_arg_tensor(h, 0, h_out)
            shim.dispatch_single(h, n)

        assert shim.run(fn, body) != 0
    assert shim.failed() == ["dispatch_single"]
    message = emulated_shim.last_error()
    assert message.startswith("KernelError") and "out of bounds of argument 0" in message
    assert base.isnan().all()


@pytest.mark.parametrize(
    "dispatch,expected",
    [
        (lambda s, h: s.dispatch_single_with_group_size(h, 64, 2048), "exceeds the kernel's limit of 1024"),
        (lambda s, h: s.dispatch_single_with_group_size(h, 64, 0), "positive"),
        (lambda s, h: s.dispatch_single(h, 0), "positive"),
        (
            lambda s, h: s.dispatch_array_with_group_size(h, u64s(8, 8), 2, u64s(8), 1),
            "different numbers of dimensions",
        ),
        (lambda s, h: s.dispatch_array(h, u64s(1, 1, 1, 1), 4), "1 to 3 values"),
        (lambda s, h: s.dispatch_array(h, None, 1), "1 to 3 values"),
    ],
)
def test_bad_launch_shapes(shim, lib, dispatch, expected):
    fn = shim.kernel(lib, b"axpb")
    x = torch.zeros(64)
    out = nan_like(x)
    with emulated_shim.tensor_handles(out, x) as (h_out, h_x):

        def body(h):
            shim.start_encoding(h)
            shim.set_arg_tensor(h, 0, h_out)
            shim.set_arg_tensor(h, 1, h_x)
            shim.set_arg_int(h, 2, 1)
            shim.set_arg_int(h, 3, 1)
            dispatch(shim, h)

        assert shim.run(fn, body) != 0
    assert len(shim.failed()) == 1 and shim.failed()[0].startswith("dispatch")
    assert expected in emulated_shim.last_error()
    assert out.isnan().all()


def test_bad_arguments(shim, lib):
    fn = shim.kernel(lib, b"axpb")
    x = torch.zeros(8)
    out = nan_like(x)
    with emulated_shim.tensor_handles(out, x) as (h_out, h_x):

        def body(h):
            shim.start_encoding(h)
            shim.set_arg_tensor(h, 0, h_out)
            shim.set_arg_int(h, 1, 7)  # the kernel takes a float buffer here
            shim.set_arg_int(h, 2, 1)
            shim.set_arg_int(h, 3, 1)
            shim.dispatch_single(h, 8)

        assert shim.run(fn, body) != 0
    message = emulated_shim.last_error()
    assert message.startswith("TypeError") and "argument 1" in message and "float" in message
    assert out.isnan().all()


def test_first_failure_in_a_block_is_the_reported_one(shim, lib):
    fn = shim.kernel(lib, b"axpb")
    x = torch.ones(4)
    out = nan_like(x)
    with emulated_shim.tensor_handles(out, x) as (h_out, h_x):

        def body(h):
            shim.set_arg_tensor(h, 0, h_out)  # before start_encoding
            shim.start_encoding(h)
            shim.dispatch_single(h, 4)  # arguments missing

        assert shim.run(fn, body) != 0
    assert shim.failed() == ["set_arg_tensor", "dispatch_single"]
    assert "before start_encoding" in emulated_shim.last_error()


def test_mac_faithful_mode_does_not_fail_the_block(shim, lib):
    """As on a Mac: the calls inside report their errors, the block itself succeeds."""
    fn = shim.kernel(lib, b"axpb")

    def body(h):
        shim.start_encoding(h)
        shim.dispatch_single(h, 4)  # arguments missing

    assert shim.run(fn, body) != 0
    with emulated_shim.mac_faithful():
        assert shim.run(fn, body) == 0
        assert shim.failed() == ["dispatch_single"]
    assert shim.run(fn, body) != 0  # and back to failing the block


def test_calls_outside_a_block_and_null_handles(shim, lib):
    fn = shim.kernel(lib, b"axpb")
    assert shim.dll.aoti_torch_mps_start_encoding(fn) != 0
    assert "start_encoding outside run_command_block" in emulated_shim.last_error()
    assert shim.dll.aoti_torch_mps_start_encoding(None) != 0
    assert "NULL kernel function handle" in emulated_shim.last_error()
    assert shim.dll.aoti_torch_mps_create_shader_library(None, ctypes.byref(ctypes.c_void_p())) != 0
    assert "must not be NULL" in emulated_shim.last_error()
    assert shim.dll.aoti_torch_mps_run_command_block(fn, None, None) != 0
    # a library handle is not a kernel handle, though both are ids
    assert shim.dll.aoti_torch_mps_set_arg_int(lib, 0, 1) != 0
    assert "not a live kernel function handle" in emulated_shim.last_error()

    def body(h):
        shim.start_encoding(h)
        shim.set_arg_tensor(h, 0, None)

    assert shim.run(fn, body) != 0
    assert "NULL tensor handle" in emulated_shim.last_error()


def test_nested_blocks_on_one_kernel_are_an_error(shim, lib):
    fn = shim.kernel(lib, b"axpb")
    inner = []
    assert shim.run(fn, lambda h: inner.append(shim.run(fn, lambda h2: None, expect_block=False))) != 0
    assert inner and inner[0] != 0
    assert "command blocks do not nest" in emulated_shim.last_error()


# -- host buffers ------------------------------------------------------------------------------------


def test_malloc_memcpy_copy_buffer_free(shim):
    dll = shim.dll
    a, b = ctypes.c_void_p(), ctypes.c_void_p()
    assert dll.aoti_torch_mps_malloc(ctypes.byref(a), 16) == 0 and a.value
    assert dll.aoti_torch_mps_malloc(ctypes.byref(b), 16) == 0 and b.value
    constants = (ctypes.c_uint8 * 32)(*range(32))
    # buffer[4:12] = constants[10:18]
    assert dll.aoti_torch_mps_memcpy(a, 4, 10, 8, constants) == 0
    ctypes.memset(b, 0xFF, 16)
    # dst[8:14] = src[6:12]
    assert dll.aoti_torch_mps_copy_buffer(a, b, 6, 6, 8) == 0
    got = bytes((ctypes.c_uint8 * 16).from_address(b.value))
    assert got == bytes([0xFF] * 8 + list(range(12, 18)) + [0xFF] * 2)
    assert dll.aoti_torch_mps_memcpy(None, 0, 0, 1, constants) != 0
    assert dll.aoti_torch_mps_free(a) == 0 and dll.aoti_torch_mps_free(b) == 0
    assert dll.aoti_torch_mps_malloc(None, 4) != 0


# -- C++ translation units that include shim_mps.h ---------------------------------------------------

TU = r"""
// cpp_wrapper_mps.py's calling pattern, by hand: lazily created libraries with RAII deleters, and
// kernel calls as lambdas passed through a std::function and aoti_torch_mps_run_command_block.
#include <torch/csrc/inductor/aoti_torch/c/shim_mps.h>
#include <functional>
#include <memory>
#include <utility>
#include <pthread.h>

#if defined(_LIBCPP_VERSION)
// libc++'s std::function is not libstdc++'s, whose layout the shim's trampoline reads (AOTI builds
// models with g++ on Linux), so the libc++ build brings a trampoline of its own.
static void block_trampoline(AOTIMetalKernelFunctionHandle handle, void* user_data) {
  (*static_cast<std::function<void(AOTIMetalKernelFunctionHandle)>*>(user_data))(handle);
}
#define TRAMPOLINE block_trampoline
#else
#define TRAMPOLINE aoti_torch_mps_shared_callback
#endif

static const char* mps_lib_0_source = R"MTL(
#include <metal_stdlib>
using namespace metal;
kernel void generated_kernel(device float* out [[buffer(0)]], constant float* x [[buffer(1)]],
                             constant long& a [[buffer(2)]], constant long& b [[buffer(3)]],
                             uint i [[thread_position_in_grid]]) {
  out[i] = a * x[i] + b;
}
)MTL";

static const char* mps_lib_1_source = R"MTL(
#include <metal_stdlib>
using namespace metal;
kernel void generated_kernel(device float* out [[buffer(0)]], constant long& width [[buffer(1)]],
                             uint2 p [[thread_position_in_grid]]) {
  out[p.y * width + p.x] = p.x + 100 * p.y;
}
)MTL";

#define GETTER(lib_name)                                                                        \
  AOTIMetalKernelFunctionHandle get_##lib_name##_handle() {                                     \
    static auto kernel_handle = []() {                                                          \
      AOTIMetalShaderLibraryHandle lib_handle = nullptr;                                        \
      AOTIMetalKernelFunctionHandle kern_handle = nullptr;                                      \
      aoti_torch_mps_create_shader_library(lib_name##_source, &lib_handle);                     \
      aoti_torch_mps_get_kernel_function(lib_handle, "generated_kernel", &kern_handle);         \
      auto lib_deleter = [](AOTIMetalShaderLibraryHandle h) {                                   \
        if (h) aoti_torch_mps_delete_shader_library(h);                                         \
      };                                                                                        \
      using LibDeleter = decltype(lib_deleter);                                                 \
      using LibPtr = std::unique_ptr<AOTIMetalShaderLibraryOpaque, LibDeleter>;                 \
      return std::make_pair(kern_handle, LibPtr(lib_handle, lib_deleter));                      \
    }();                                                                                        \
    return kernel_handle.first;                                                                 \
  }
GETTER(mps_lib_0)
GETTER(mps_lib_1)

extern "C" __attribute__((visibility("default"))) AOTITorchError run_axpb(
    AtenTensorHandle buf0, AtenTensorHandle arg0_1, int64_t a, int64_t b, uint64_t n) {
  auto mps_lib_0_lambda_0 = [&](AOTIMetalKernelFunctionHandle handle) {
    aoti_torch_mps_start_encoding(handle);
    aoti_torch_mps_set_arg_tensor(handle, 0, buf0);
    aoti_torch_mps_set_arg_tensor(handle, 1, arg0_1);
    aoti_torch_mps_set_arg_int(handle, 2, a);
    aoti_torch_mps_set_arg_int(handle, 3, b);
    aoti_torch_mps_dispatch_single(handle, static_cast<uint64_t>(n));
  };
  std::function<void(AOTIMetalKernelFunctionHandle)> mps_lib_0_func_wrapper_0 = mps_lib_0_lambda_0;
  return aoti_torch_mps_run_command_block(get_mps_lib_0_handle(), TRAMPOLINE, &mps_lib_0_func_wrapper_0);
}

extern "C" __attribute__((visibility("default"))) AOTITorchError run_grid2(
    AtenTensorHandle buf0, int64_t width, uint64_t w, uint64_t h) {
  auto mps_lib_1_lambda_1 = [&](AOTIMetalKernelFunctionHandle handle) {
    aoti_torch_mps_start_encoding(handle);
    aoti_torch_mps_set_arg_tensor(handle, 0, buf0);
    aoti_torch_mps_set_arg_int(handle, 1, width);
    {
      uint64_t mps_lib_1_threads_array[] = {w, h};
      uint64_t mps_lib_1_group_size_array[] = {8, 4};
      aoti_torch_mps_dispatch_array_with_group_size(
          handle, mps_lib_1_threads_array, 2, mps_lib_1_group_size_array, 2);
    }
  };
  std::function<void(AOTIMetalKernelFunctionHandle)> mps_lib_1_func_wrapper_1 = mps_lib_1_lambda_1;
  return aoti_torch_mps_run_command_block(get_mps_lib_1_handle(), TRAMPOLINE, &mps_lib_1_func_wrapper_1);
}

// run_axpb on a thread Python has never seen (the shim's callbacks must take the GIL themselves).
struct AxpbCall { AtenTensorHandle out, x; int64_t a, b; uint64_t n; AOTITorchError rc; };
static void* axpb_thread(void* p) {
  auto* c = static_cast<AxpbCall*>(p);
  c->rc = run_axpb(c->out, c->x, c->a, c->b, c->n);
  return nullptr;
}
extern "C" __attribute__((visibility("default"))) AOTITorchError run_axpb_on_thread(
    AtenTensorHandle out, AtenTensorHandle x, int64_t a, int64_t b, uint64_t n) {
  AxpbCall call{out, x, a, b, n, -1};
  pthread_t t;
  if (pthread_create(&t, nullptr, axpb_thread, &call) != 0) return -2;
  pthread_join(t, nullptr);
  return call.rc;
}
"""


def _aoti_compiler() -> str:
    """The C++ compiler torch's AOTInductor builds models with here (g++ on Linux)."""
    from torch._inductor.cpp_builder import get_cpp_compiler

    compiler = get_cpp_compiler()
    if shutil.which(compiler) is None:
        pytest.skip(f"AOTInductor's compiler {compiler!r} is not installed, so no AOTI model can be built here")
    return compiler


def _build_tu(kind: str, out_dir: Path) -> Path:
    src = out_dir / "tu.cpp"
    src.write_text(TU)
    out = out_dir / f"tu-{kind}.so"
    include = str(emulated_shim.TORCH_INCLUDE)
    flags = ["-std=c++17", "-O1", "-fPIC", "-shared", "-isystem", include, str(src), "-o", str(out)]
    # zig's clang links its libc++ statically (zig builds it once per machine, about a minute).
    cmd = [toolchain.zig_executable(), "c++", *flags] if kind == "zig" else [_aoti_compiler(), *flags, "-pthread"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture(scope="module", params=["zig", "aoti-compiler"])
def tu(request, shim, tmp_path_factory) -> tuple[str, ctypes.CDLL]:
    kind = request.param
    path = _build_tu(kind, tmp_path_factory.mktemp(kind))
    dll = ctypes.CDLL(str(path))  # after the shim: its aoti_torch_mps_* resolve against it
    P = ctypes.c_void_p
    for name in ("run_axpb", "run_axpb_on_thread"):
        getattr(dll, name).argtypes = [P, P, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint64]
        getattr(dll, name).restype = ctypes.c_int32
    dll.run_grid2.argtypes = [P, ctypes.c_int64, ctypes.c_uint64, ctypes.c_uint64]
    dll.run_grid2.restype = ctypes.c_int32
    return kind, dll


@pytest.mark.parametrize("entry", ["run_axpb", "run_axpb_on_thread"])
def test_cpp_translation_unit_calls_the_shim(tu, entry):
    _, dll = tu
    x_base = torch.randn(50, generator=GEN)
    x = x_base[7:47]
    out = torch.full((40,), float("nan"))
    with emulated_shim.tensor_handles(out, x) as (h_out, h_x):
        assert getattr(dll, entry)(h_out, h_x, -3, 5, 40) == 0, emulated_shim.last_error()
    torch.testing.assert_close(out, -3 * x + 5)


def test_cpp_translation_unit_two_dim_dispatch_and_errors(tu):
    _, dll = tu
    w, h = 10, 7
    out = torch.full((h, w), float("nan"))
    with emulated_shim.tensor_handles(out) as (h_out,):
        assert dll.run_grid2(h_out, w, w, h) == 0, emulated_shim.last_error()
        expected = torch.arange(w).float()[None, :] + 100 * torch.arange(h).float()[:, None]
        torch.testing.assert_close(out, expected)
        # a grid wider than the tensor's rows: the kernel writes out of bounds
        out.fill_(float("nan"))
        assert dll.run_grid2(h_out, w, w, h + 1) != 0
    assert "out of bounds of argument 0" in emulated_shim.last_error()
    assert out.isnan().all()


FRESH_PROCESS = """
import ctypes, sys, torch
from mps_inductor_ext.aoti import emulated_shim
emulated_shim.load()
dll = ctypes.CDLL(sys.argv[1])
P = ctypes.c_void_p
dll.run_axpb.argtypes = [P, P, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint64]
x = torch.arange(6.0)
out = torch.full((6,), float("nan"))
with emulated_shim.tensor_handles(out, x) as (h_out, h_x):
    assert dll.run_axpb(h_out, h_x, 2, 1, 6) == 0, emulated_shim.last_error()
assert torch.equal(out, 2 * x + 1), out
print("ok")
"""


def test_fresh_process_runs_and_exits_cleanly(tu, tmp_path):
    """The TU's static library deleters run at exit, after Python has shut down: the shim must
    then fail those calls quietly instead of entering a finalized interpreter."""
    kind, dll = tu
    proc = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS, dll._name], capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"
    assert proc.stderr == ""


def test_uninstalled_shim_returns_errors():
    script = textwrap.dedent(
        """
        import ctypes, torch
        from mps_inductor_ext.aoti import emulated_shim
        dll = ctypes.CDLL(str(emulated_shim.build()), mode=ctypes.RTLD_GLOBAL)
        dll.mpsk_shim_last_error.restype = ctypes.c_char_p
        lib = ctypes.c_void_p()
        assert dll.aoti_torch_mps_create_shader_library(b"kernel void k() {}", ctypes.byref(lib)) == 1
        print(dll.mpsk_shim_last_error().decode())
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "no Python runtime installed" in proc.stdout
