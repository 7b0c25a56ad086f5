"""Every guard of the emulator: what Metal would hang on, reject, or silently corrupt is an error here.

Each guard is checked on a kernel that trips it and, where it matters, on a twin that must
not trip it, so a guard that fires on everything cannot pass.
"""

import pytest
import torch

from mps_inductor_ext.shaders import KernelError, compile_shader

H = "#include <metal_stdlib>\nusing namespace metal;\n"

DIVERGENT = (
    H
    + """
kernel void early_return(device float* out [[buffer(0)]], uint i [[thread_index_in_threadgroup]]) {
  threadgroup float buf[64];
  if (i == 3) return;
  buf[i] = i;
  threadgroup_barrier(mem_flags::mem_threadgroup);
  out[i] = buf[i];
}
kernel void barrier_in_if(device float* out [[buffer(0)]], uint i [[thread_index_in_threadgroup]]) {
  if (i < 16) {
    threadgroup_barrier(mem_flags::mem_threadgroup);
  }
  out[i] = 1.0;
}
kernel void two_barriers(device float* out [[buffer(0)]], uint i [[thread_index_in_threadgroup]]) {
  if (i < 16) {
    threadgroup_barrier(mem_flags::mem_threadgroup);
  } else {
    threadgroup_barrier(mem_flags::mem_threadgroup);
  }
  out[i] = 1.0;
}
kernel void barrier_uniform(device float* out [[buffer(0)]], uint i [[thread_index_in_threadgroup]],
                            uint n [[threads_per_threadgroup]]) {
  threadgroup float buf[64];
  buf[i] = i;
  threadgroup_barrier(mem_flags::mem_threadgroup);
  out[i] = buf[n - 1 - i];
}
kernel void simd_partial(device float* out [[buffer(0)]], uint i [[thread_index_in_threadgroup]]) {
  float v = i;
  if (i % 32 < 8) v = simd_sum(v);
  out[i] = v;
}
kernel void simd_after_return(device float* out [[buffer(0)]], uint i [[thread_index_in_threadgroup]]) {
  if (i == 5) return;
  out[i] = simd_sum(float(i));
}
kernel void simd_two_functions(device float* out [[buffer(0)]], uint i [[thread_index_in_threadgroup]]) {
  float v = i;
  if (i < 4) v = simd_sum(v); else v = simd_max(v);
  out[i] = v;
}
kernel void simd_uniform(device float* out [[buffer(0)]], uint i [[thread_index_in_threadgroup]]) {
  out[i] = simd_sum(float(i));
}
"""
)


@pytest.fixture(scope="module")
def divergent():
    """The strict lint this project's own kernels run under: every lane reaches every sync."""
    return compile_shader(DIVERGENT, backend="cpu", strict=True)


@pytest.fixture(scope="module")
def metal_divergent():
    """Metal's own rules: SIMD-group functions act on the lanes that call them."""
    return compile_shader(DIVERGENT, backend="cpu")


def _line(src: str, text: str, nth: int = 0) -> int:
    """1-based line of the nth line of src containing text."""
    return [n for n, ln in enumerate(src.splitlines(), 1) if text in ln][nth]


def _at(text: str, nth: int = 0) -> str:
    return rf"\(line {_line(DIVERGENT, text, nth)}\)"


@pytest.mark.parametrize(
    "kernel,expect",
    [
        (
            "early_return",
            rf"threadgroup_barrier {_at('threadgroup_barrier')} reached by 63 of 64 threads .*"
            rf"thread 3 returned without reaching it",
        ),
        ("barrier_in_if", rf"threadgroup_barrier {_at('threadgroup_barrier', 1)} reached by 16 of 64 threads"),
        (
            "two_barriers",
            rf"diverged: thread 0 waits at threadgroup_barrier {_at('threadgroup_barrier', 2)}, "
            rf"thread 16 at threadgroup_barrier {_at('threadgroup_barrier', 3)}",
        ),
        ("simd_partial", rf"simd_sum {_at('if (i % 32 < 8)')} reached by 8 of 32 lanes of SIMD-group 0"),
        (
            "simd_after_return",
            rf"simd_sum {_at('out[i] = simd_sum(float(i))')} reached by 31 of 32 lanes.*"
            rf"lane 5 returned",
        ),
        ("simd_two_functions", rf"lane 0 waits at simd_sum {_at('simd_max')}, lane 4 at simd_max"),
    ],
)
def test_divergent_sync_is_a_kernel_error(divergent, kernel, expect):
    """Strict mode: a barrier or SIMD function reached by part of a group is reported; the
    scheduler sees every thread blocked or done, so it reports it instead of waiting."""
    out = torch.zeros(64)
    with pytest.raises(KernelError, match=rf"kernel '{kernel}': .*{expect}"):
        getattr(divergent, kernel)(out, threads=64, group_size=64)
    assert torch.equal(out, torch.zeros(64))


@pytest.mark.parametrize(
    "kernel,expect",
    [
        ("barrier_in_if", r"every thread of SIMD-group 1 of threadgroup \(0, 0, 0\) returned without reaching it"),
        (
            "two_barriers",
            rf"diverged: thread 0 waits at threadgroup_barrier {_at('threadgroup_barrier', 2)}, "
            rf"thread 16 at threadgroup_barrier {_at('threadgroup_barrier', 3)}",
        ),
    ],
)
def test_divergent_barriers_are_errors_under_metal_rules_too(metal_divergent, kernel, expect):
    """Threads at two different barriers, or a whole SIMD-group gone while others wait, would hang."""
    out = torch.zeros(64)
    with pytest.raises(KernelError, match=rf"kernel '{kernel}': .*{expect}"):
        getattr(metal_divergent, kernel)(out, threads=64, group_size=64)
    assert torch.equal(out, torch.zeros(64))


def test_simd_functions_act_on_the_active_lanes(metal_divergent):
    """MSL: a SIMD-group function in divergent control flow combines only the lanes that call it
    (Inductor's threadgroup reductions call simd_sum from a prefix of the lanes)."""
    i = torch.arange(64, dtype=torch.float32)
    out = torch.zeros(64)
    metal_divergent.simd_partial(out, threads=64, group_size=64)
    active = (i % 32) < 8
    expected = torch.where(active, torch.where(i < 32, 28.0, 284.0), i)
    torch.testing.assert_close(out, expected)

    out = torch.zeros(64)
    metal_divergent.simd_after_return(out, threads=64, group_size=64)
    expected = torch.tensor([496.0 - 5] * 32 + [1520.0] * 32)
    expected[5] = 0.0  # lane 5 returned before writing
    torch.testing.assert_close(out, expected)

    out = torch.zeros(64)
    metal_divergent.simd_two_functions(out, threads=64, group_size=64)
    expected = torch.tensor([6.0] * 4 + [31.0] * 28 + [63.0] * 32)
    torch.testing.assert_close(out, expected)


def test_barrier_after_some_lanes_returned_counts_per_simd_group(metal_divergent):
    """Documented choice: a barrier that every SIMD-group still reaches, with some of its lanes
    returned, releases (Apple GPUs count arrival per SIMD-group; MLX's gemv relies on it).
    Strict mode rejects it (test_divergent_sync_is_a_kernel_error)."""
    out = torch.full((64,), -1.0)
    metal_divergent.early_return(out, threads=64, group_size=64)
    expected = torch.arange(64, dtype=torch.float32)
    expected[3] = -1.0
    torch.testing.assert_close(out, expected)


def test_uniform_sync_runs(divergent):
    out = torch.zeros(64)
    divergent.barrier_uniform(out, threads=64, group_size=64)
    torch.testing.assert_close(out, torch.arange(63, -1, -1, dtype=torch.float32))
    divergent.simd_uniform(out, threads=64, group_size=64)
    torch.testing.assert_close(out, torch.tensor([496.0] * 32 + [1520.0] * 32))


def test_barrier_in_if_is_fine_when_the_whole_group_takes_it(divergent):
    """A short edge group where every thread satisfies the condition is not divergent."""
    out = torch.zeros(16)
    divergent.barrier_in_if(out, threads=16, group_size=64)
    torch.testing.assert_close(out, torch.ones(16))


def _kernel(body: str, params: str = "") -> str:
    return H + (
        f"kernel void k(device float* o [[buffer(0)]],{params} uint i [[thread_position_in_grid]]) {{\n{body}\n}}\n"
    )


@pytest.mark.parametrize(
    "body,expect",
    [
        ("  double d = 1.0;\n  o[i] = d;", r"'double' is not supported in Metal"),
        ("  o[i] = (float)(double)o[i];", r"'double'"),
        ("  long double x = 2;\n  o[i] = x;", r"'double'"),
        ("  o[i] = 1.0L;", r"'1.0L' is a long double literal"),
        ("  o[i] = 2.5e1l;", r"long double literal"),
    ],
)
def test_double_is_a_compile_error(body, expect):
    with pytest.raises(SyntaxError, match=expect) as info:
        compile_shader(_kernel(body), backend="cpu")
    assert info.value.lineno == 4


@pytest.mark.parametrize(
    "helper,call",
    [
        ("float f(threadgroup float* p) { return p[0]; }", "f(o)"),
        ("float f(float* p) { return p[0]; }", "f(o)"),
        ("float f(thread float* p) { return p[0]; }", "f(o)"),
        ("float f(thread float& p) { return p; }", "f(o[0])"),
        ("float f(device float* p) { return p[0]; }", "f(x)"),
    ],
)
def test_address_space_mismatch_is_a_compile_error(helper, call):
    """Passing a device (or constant) pointer where another address space is expected is a
    Metal compile error; clang address spaces make it one here too."""
    src = (
        H
        + helper
        + "\n"
        + (
            "kernel void k(device float* o [[buffer(0)]], constant float* x [[buffer(1)]],\n"
            f"              uint i [[thread_position_in_grid]]) {{ o[i] = {call}; }}\n"
        )
    )
    with pytest.raises(SyntaxError, match=r"no matching function for call to 'f'") as info:
        compile_shader(src, backend="cpu")
    assert info.value.lineno == 5 and info.value.filename == "shader.metal"
    assert "address space '" in str(info.value) and "mpsk-build" not in str(info.value)


def test_address_space_names_in_message():
    src = H + "float f(threadgroup float* p) { return p[0]; }\n" + _kernel("  o[i] = f(o);").split("\n", 2)[2]
    with pytest.raises(SyntaxError, match="address space 'device' as a pointer to address space 'threadgroup'"):
        compile_shader(src, backend="cpu")


def test_matching_address_space_compiles():
    src = H + "float f(device float* p) { return p[0]; }\n" + _kernel("  o[i] = f(o + i) + 1.0;").split("\n", 2)[2]
    lib = compile_shader(src, backend="cpu")
    out = torch.arange(4.0)
    lib.k(out)
    torch.testing.assert_close(out, torch.arange(4.0) + 1)


def test_compile_error_carries_compiler_message_and_user_line():
    src = _kernel("\n\n  o[i] = undefined_thing;")
    with pytest.raises(SyntaxError, match=r"shader.metal:6:\d+: error: use of undeclared identifier") as info:
        compile_shader(src, backend="cpu")
    assert info.value.lineno == 6


def test_missing_include_is_a_compile_error():
    with pytest.raises(SyntaxError, match="'no_such_header' file not found") as info:
        compile_shader(H + "#include <no_such_header>\n", backend="cpu")
    assert info.value.lineno == 3


OOB = (
    H
    + """
kernel void write_at(device float* out [[buffer(0)]], constant long& at [[buffer(1)]],
                     uint i [[thread_position_in_grid]]) {
  out[i] = 7.0;
  if (i == 0) out[at] = 9.0;
}
kernel void write_two(device float* a [[buffer(0)]], device float* b [[buffer(1)]],
                      constant long& at [[buffer(2)]], uint i [[thread_position_in_grid]]) {
  a[i] = 1.0;
  b[i] = 2.0;
  if (i == 0) b[at] = 3.0;
}
kernel void tg_write_at(device float* out [[buffer(0)]], constant long& at [[buffer(1)]],
                        uint i [[thread_index_in_threadgroup]]) {
  threadgroup float t[16];
  t[i] = 1.0;
  if (i == 0) t[at] = 2.0;
  threadgroup_barrier(mem_flags::mem_threadgroup);
  out[i] = t[i];
}
kernel void tg_write_at_no_barrier(device float* out [[buffer(0)]], constant long& at [[buffer(1)]],
                                   uint i [[thread_index_in_threadgroup]]) {
  threadgroup float t[16];
  t[i] = 1.0;
  if (i == 0) t[at] = 2.0;
  out[i] = t[i];
}
"""
)


@pytest.fixture(scope="module")
def oob():
    return compile_shader(OOB, backend="cpu")


@pytest.mark.parametrize(
    "at,expect",
    [
        (16, "past its end, at byte 64 of a 64-byte buffer"),
        (100, "past its end, at byte 400 of a 64-byte buffer"),
        (-1, "4 bytes before the start of its buffer"),
        (-300, "1200 bytes before the start of its buffer"),
    ],
)
def test_out_of_bounds_write_changes_nothing(oob, at, expect):
    """The view x[1] lies inside a larger storage: writing past it would corrupt x[0] / x[2]
    on a GPU without any fault, so the emulator reports it against the view."""
    x = torch.arange(48.0).reshape(3, 16)
    before = x.clone()
    with pytest.raises(KernelError, match=rf"kernel 'write_at' wrote out of bounds of argument 0 .*{expect}"):
        oob.write_at(x[1], at)
    assert torch.equal(x, before)


def test_in_bounds_write_lands(oob):
    x = torch.arange(48.0).reshape(3, 16)
    oob.write_at(x[1], 15, threads=1)
    expected = torch.arange(48.0).reshape(3, 16)
    expected[1, 0] = 7.0
    expected[1, 15] = 9.0
    assert torch.equal(x, expected)


@pytest.mark.parametrize("at", [16, 24])
def test_out_of_bounds_write_with_aliasing_arguments_changes_nothing(oob, at):
    """Two views of one storage are staged together (so they still alias), and neither is
    changed when either overflows."""
    s = torch.zeros(48)
    before = s.clone()
    with pytest.raises(KernelError, match=r"argument 1 .*past its end"):
        oob.write_two(s[:16], s[16:32], at)
    assert torch.equal(s, before)


def test_overlapping_arguments_are_staged_together(oob):
    """b = s[8:24] overlaps a = s[:16]; b[8] is a's last half, and writing it is in bounds."""
    s = torch.zeros(24)
    oob.write_two(s[:16], s[8:24], 15, threads=8)
    expected = torch.cat([torch.ones(8), torch.full((8,), 2.0), torch.zeros(8)])
    expected[23] = 3.0
    assert torch.equal(s, expected)


@pytest.mark.parametrize("kernel", ["tg_write_at", "tg_write_at_no_barrier"])
@pytest.mark.parametrize(
    "at,expect",
    [
        (16, r"past the end of threadgroup array 't' \(at byte 64 of a 64-byte array\)"),
        (40, r"past the end of threadgroup array 't' \(at byte 160 of a 64-byte array\)"),
        (2000, r"past the end of threadgroup array 't' \(at byte 8000 of a 64-byte array\)"),
        (-1, r"before the start of threadgroup array 't' \(4 bytes before it\)"),
    ],
)
def test_threadgroup_out_of_bounds_write(oob, kernel, at, expect):
    out = torch.zeros(16)
    with pytest.raises(KernelError, match=rf"kernel '{kernel}': write {expect} in threadgroup \(0, 0, 0\)"):
        getattr(oob, kernel)(out, at, threads=16)
    assert torch.equal(out, torch.zeros(16))


LAUNCH = (
    H
    + """
kernel void axpy(device float* out [[buffer(0)]], constant float* x [[buffer(1)]],
                 constant float& a [[buffer(2)]], constant int& n [[buffer(3)]],
                 uint i [[thread_position_in_grid]]) {
  if ((int)i < n) out[i] = a * x[i];
}
kernel void capped(device float* out [[buffer(0)]], uint i [[thread_position_in_grid]],
                   uint g [[threads_per_threadgroup]]) [[max_total_threads_per_threadgroup(64)]] {
  out[i] = g;
}
kernel void fill(device float* out [[buffer(0)]], constant long& v [[buffer(1)]],
                 uint i [[thread_position_in_grid]]) {
  out[i] = v;
}
kernel void fill2d(device float* out [[buffer(0)]], uint2 p [[thread_position_in_grid]],
                   uint2 g [[threads_per_grid]]) {
  out[p.y * g.x + p.x] = 1.0;
}
"""
)


@pytest.fixture(scope="module")
def launch():
    return compile_shader(LAUNCH, backend="cpu")


X = torch.arange(8.0)


@pytest.mark.parametrize(
    "kernel,args,kwargs,error,expect",
    [
        (
            "fill",
            (3,),
            dict(threads=2048, group_size=2048),
            ValueError,
            r"2048 threads\) exceeds the kernel's limit of 1024",
        ),
        ("fill2d", (), dict(threads=[64, 32], group_size=[64, 32]), ValueError, r"exceeds the kernel's limit of 1024"),
        ("capped", (), dict(threads=128, group_size=128), ValueError, r"exceeds the kernel's limit of 64"),
        (
            "fill2d",
            (),
            dict(threads=[4, 2], group_size=[4]),
            ValueError,
            r"threads has 2 dimensions but group_size has 1",
        ),
        ("fill", (3,), dict(threads=[]), ValueError, r"threads must have 1 to 3 dimensions, got 0"),
        ("fill", (3,), dict(threads=[1, 1, 1, 1]), ValueError, r"threads must have 1 to 3 dimensions, got 4"),
        ("fill", (3,), dict(threads=8, group_size=[]), ValueError, r"group_size must have 1 to 3 dimensions"),
        ("fill", (3,), dict(threads=0), ValueError, r"threads entries must be positive"),
        ("fill", (3,), dict(threads=[8, 0]), ValueError, r"threads entries must be positive"),
        ("fill", (3,), dict(threads=8, group_size=0), ValueError, r"group_size entries must be positive"),
        ("fill", (3,), dict(threads=8.0), TypeError, r"threads must be an int or a list"),
        ("fill", (3,), dict(threads=True), TypeError, r"threads must be an int or a list"),
        ("fill", (3,), dict(threads=2**40), ValueError, r"below 2\*\*32"),
        ("fill", (), {}, TypeError, r"takes buffers \[0, 1\] but got arguments for \[0\]"),
        ("fill", (3, 4), {}, TypeError, r"takes buffers \[0, 1\] but got arguments for \[0, 1, 2\]"),
        (
            "fill",
            (torch.tensor([3], dtype=torch.int32),),
            {},
            TypeError,
            r"torch.int32 tensor, which the kernel would misread as long",
        ),
        ("fill", (None,), {}, TypeError, r"argument 1 .*unsupported argument type NoneType"),
        ("fill", (True,), {}, TypeError, r"Python bool"),
        ("fill", (3.0,), {}, TypeError, r"a Python float binds as float32, which the kernel would misread as long"),
        ("fill", (2**63,), {}, ValueError, r"does not fit int64"),
        ("fill", ([3, 4.5],), {}, TypeError, r"only ints or only floats"),
        ("fill", ([],), {}, ValueError, r"empty list"),
        ("fill", ([X, X],), {}, TypeError, r"list of tensors"),
        (
            "axpy",
            (X, 2.0, 8),
            {},
            TypeError,
            r"argument 3 \(reference to int\): a Python int binds as int64.*'constant long&'",
        ),
        ("fill", (3,), dict(arg_casts="fp64"), ValueError, r"unsupported cast 'fp64'"),
        ("fill", (3,), dict(arg_casts=["int32"]), TypeError, r"arg_casts must be None, a str or a dict"),
        ("fill", (3,), dict(arg_casts={5: "int32"}), ValueError, r"arg_casts names argument 5"),
        ("fill", (3,), dict(arg_casts={"1": "int32"}), TypeError, r"arg_casts entries must be int: str"),
        ("fill", (3,), dict(arg_casts={0: "int32"}), TypeError, r"arg_casts applies to scalars and lists, not tensors"),
        (
            "fill",
            (3,),
            dict(arg_casts={1: "int32"}),
            TypeError,
            r"arg_casts 'int32' makes int32, which the kernel would misread as long",
        ),
        ("axpy", (X, 2.0, 8.0), dict(arg_casts={3: "int32"}), TypeError, r"argument 3 .*would truncate a Python float"),
        ("axpy", (X, 2.0, 300), dict(arg_casts={3: "int8"}), TypeError, r"misread as int"),
    ],
)
def test_bad_launch_is_rejected_before_running(launch, kernel, args, kwargs, error, expect):
    out = torch.zeros(8)
    with pytest.raises(error, match=expect) as info:
        getattr(launch, kernel)(out, *args, **kwargs)
    assert f"kernel '{kernel}'" in str(info.value)
    assert torch.equal(out, torch.zeros(8))


@pytest.mark.parametrize(
    "out,expect",
    [
        (
            torch.zeros(8, dtype=torch.float16),
            (TypeError, r"torch.float16 tensor, which the kernel would misread as float"),
        ),
        (torch.zeros(8, dtype=torch.float64), (TypeError, r"Metal has no torch.float64 buffers")),
        (torch.zeros(8, dtype=torch.complex64), (TypeError, r"Metal has no torch.complex64 buffers")),
        (torch.zeros(8, device="meta"), (ValueError, r"the emulator runs on CPU tensors, got a tensor on meta")),
        (3, (TypeError, r"read-only bytes, so the kernel's writes .* would be lost")),
    ],
)
def test_bad_buffer_argument(launch, out, expect):
    error, pattern = expect
    with pytest.raises(error, match=pattern):
        launch.fill(out, 3, threads=8)


def test_unknown_kernel_names_the_available_ones(launch):
    with pytest.raises(AttributeError, match=r"no kernel 'nope'; it has \['axpy', 'capped', 'fill', 'fill2d'\]"):
        launch.nope  # noqa: B018


def test_max_total_threads_attribute_caps_the_default_group(launch):
    assert launch.capped.max_threads_per_threadgroup == 64
    out = torch.zeros(100)
    launch.capped(out)  # default group min(100, 64): groups of 64 and an edge group of 36
    torch.testing.assert_close(out, torch.tensor([64.0] * 64 + [36.0] * 36))


@pytest.mark.parametrize(
    "decl",
    [
        "[[max_total_threads_per_threadgroup(64)]]\nkernel void k",
        "[[kernel, max_total_threads_per_threadgroup(64)]] void k",
        "[[kernel]] [[max_total_threads_per_threadgroup(64)]] void k",
    ],
)
def test_max_total_threads_attribute_forms(decl):
    src = H + decl + "(device float* o [[buffer(0)]], uint i [[thread_position_in_grid]]) { o[i] = 1.0; }\n"
    k = compile_shader(src, backend="cpu").k
    assert k.max_threads_per_threadgroup == 64
    with pytest.raises(ValueError, match="limit of 64"):
        k(torch.empty(128), threads=128, group_size=128)


SCHEDULE_RACES = """
#include <metal_stdlib>
using namespace metal;
// Two threads store different values into one element: the survivor depends on timing.
kernel void write_race(device float* out, constant float* x, uint i [[thread_position_in_grid]]) {
  out[i / 2] = x[i];
}
// Each threadgroup reads what the previous one wrote: threadgroups have no order.
kernel void cross_group(device float* out, uint g [[threadgroup_position_in_grid]],
                        uint t [[thread_position_in_threadgroup]]) {
  out[g * 4 + t] = g == 0 ? 1.0f : out[(g - 1) * 4 + t] + 1.0f;
}
// Every thread stores the same value: a benign race that must pass.
kernel void same_value(device float* out, constant float* x, uint i [[thread_position_in_grid]]) {
  out[i / 2] = x[i / 2];
}
"""


@pytest.mark.parametrize("kernel,threads,group", [("write_race", 8, 8), ("cross_group", 16, 4)])
def test_schedule_dependent_results_are_errors(emulate, kernel, threads, group):
    lib = emulate(SCHEDULE_RACES)
    x = torch.arange(8, dtype=torch.float32)
    out = torch.full((16,), float("nan"))
    before = out.clone()
    args = (out, x) if kernel == "write_race" else (out,)
    with pytest.raises(KernelError, match=f"kernel '{kernel}'.*another order"):
        getattr(lib, kernel)(*args, threads=threads, group_size=group)
    assert torch.equal(out.isnan(), before.isnan())


def test_benign_same_value_race_passes(emulate):
    lib = emulate(SCHEDULE_RACES)
    x = torch.arange(8, dtype=torch.float32)
    out = torch.full((4,), float("nan"))
    lib.same_value(out, x, threads=8)
    torch.testing.assert_close(out, x[:4])


MISALIGNED = """
#include <metal_stdlib>
using namespace metal;
kernel void load4(device float* out, const device float* x, uint i [[thread_position_in_grid]]) {
  const float4 v = *(const device float4*)(x + 4 * i);
  out[i] = v.x + v.y + v.z + v.w;
}
kernel void store4_shifted(device float* out, uint i [[thread_position_in_grid]]) {
  *(device float4*)(out + 4 * i + 1) = float4(1.0);
}
"""


def test_misaligned_vector_load_from_an_unaligned_view(emulate):
    lib = emulate(MISALIGNED)
    base = torch.arange(20, dtype=torch.float32)
    out = torch.full((4,), float("nan"))
    lib.load4(out, base[4:])  # a 16-byte-aligned view: fine
    torch.testing.assert_close(out, base[4:].view(4, 4).sum(1))
    out = torch.full((4,), float("nan"))
    misaligned = r"kernel 'load4': misaligned pointer to a 16-byte-aligned vector type at line 5"
    with pytest.raises(KernelError, match=misaligned):
        lib.load4(out, base[1:17])
    assert out.isnan().all()


def test_misaligned_vector_store(emulate):
    lib = emulate(MISALIGNED)
    out = torch.zeros(20)
    with pytest.raises(KernelError, match="misaligned pointer to a 16-byte-aligned vector type at line 9"):
        lib.store4_shifted(out, threads=4)
    assert (out == 0).all()


WILD = """
#include <metal_stdlib>
using namespace metal;
kernel void wild_write(device float* out, constant long& offset, uint i [[thread_position_in_grid]]) {
  out[offset + i] = 1.0;
}
kernel void wild_after_barrier(device float* out, constant long& offset, uint i [[thread_position_in_grid]]) {
  threadgroup_barrier(mem_flags::mem_threadgroup);
  out[offset + i] = 1.0;
}
"""


def test_wild_pointer_fault_is_an_error_not_a_crash(emulate):
    """A write far outside every buffer faults; the launch reports it and the process survives."""
    lib = emulate(WILD)
    out = torch.zeros(4)
    with pytest.raises(KernelError, match=r"kernel 'wild_write': the kernel faulted \(SIGSEGV"):
        lib.wild_write(out, 1 << 40, threads=4)
    assert (out == 0).all()
    lib.wild_write(out, 0, threads=4)  # the emulator still works afterwards
    assert (out == 1).all()


def test_fault_inside_a_fiber_is_an_error(emulate):
    lib = emulate(WILD)
    out = torch.zeros(64)
    for _ in range(2):  # the fiber pool recovers from an abandoned launch
        with pytest.raises(KernelError, match="the kernel faulted"):
            lib.wild_after_barrier(out, 1 << 40, threads=64, group_size=32)
    lib.wild_after_barrier(out, 0, threads=64, group_size=32)
    assert (out == 1).all()
