"""The instrumented build (include/mpsk/sanitizer.h): memory-access counters, memcheck, initcheck
and racecheck, each on a kernel that trips it and, where it matters, a twin that must not.

Expected counts are computed by hand from the kernels (one access per load or store; a float4 is
one 16-byte access). Grids are tiny: the instrumented build is several times slower.
"""

import pytest
import torch

from mps_inductor_ext.shaders import KernelError, compile_shader
from mps_inductor_ext.shaders.emulator import counters, sanitizer

H = "#include <metal_stdlib>\nusing namespace metal;\n"

COUNTED = (
    H
    + """
kernel void copy(device float* o [[buffer(0)]], device const float* x [[buffer(1)]],
                 uint i [[thread_position_in_grid]]) {
  o[i] = x[i];
}
kernel void scale4(device float4* o [[buffer(0)]], device const float4* x [[buffer(1)]],
                   uint i [[thread_position_in_grid]]) {
  o[i] = x[i] * 2.0f;
}
kernel void group_sum(device float* o [[buffer(0)]], device const float* x [[buffer(1)]],
                      uint i [[thread_position_in_grid]], uint t [[thread_index_in_threadgroup]],
                      uint g [[threadgroup_position_in_grid]]) {
  threadgroup float s[32];
  s[t] = x[i];
  threadgroup_barrier(mem_flags::mem_threadgroup);
  if (t == 0) {
    float a = 0.0f;
    for (int k = 0; k < 32; ++k) a += s[k];
    o[g] = a;
  }
}
kernel void count(device atomic_int* c [[buffer(0)]], uint i [[thread_position_in_grid]]) {
  atomic_fetch_add_explicit(c, 1, memory_order_relaxed);
}
kernel void affine(device float* o [[buffer(0)]], device const float* x [[buffer(1)]],
                   uint i [[thread_position_in_grid]]) {
  o[i] = x[i] * 2.0f + 1.0f;
}
kernel void read_at(device float* o [[buffer(0)]], device const float* x [[buffer(1)]],
                    constant long& off [[buffer(2)]], uint i [[thread_position_in_grid]]) {
  o[i] = x[i + off];
}
kernel void write_at(device float* o [[buffer(0)]], device const float* x [[buffer(1)]],
                     constant long& off [[buffer(2)]], uint i [[thread_position_in_grid]]) {
  o[i + off] = x[i];
}
kernel void accumulate(device float* o [[buffer(0)]], device const float* x [[buffer(1)]],
                       uint i [[thread_position_in_grid]]) {
  o[i] += x[i];
}
kernel void neighbour(device float* o [[buffer(0)]], device float* p [[buffer(1)]],
                      device const float* x [[buffer(2)]], uint i [[thread_position_in_grid]],
                      uint n [[threads_per_grid]]) {
  o[i] = x[i];
  threadgroup_barrier(mem_flags::mem_device);
  p[i] = o[(i + 1) % n];
}
kernel void tg_half_written(device float* o [[buffer(0)]], device const float* x [[buffer(1)]],
                            uint i [[thread_position_in_grid]], uint t [[thread_index_in_threadgroup]]) {
  threadgroup float s[64];
  s[t] = x[i];
  threadgroup_barrier(mem_flags::mem_threadgroup);
  o[i] = s[t + 32];
}
kernel void bump(device float* o [[buffer(0)]], uint i [[thread_position_in_grid]]) {
  o[0] += 1.0f;
}
"""
)


@pytest.fixture(scope="module")
def counted():
    return compile_shader(COUNTED, backend="cpu")


@pytest.fixture
def checks(monkeypatch):
    def use(value: str) -> None:
        monkeypatch.setenv(sanitizer.VARIABLE, value)

    return use


def _space(loads, load_bytes, stores, store_bytes):
    return counters.SpaceCounts(loads, load_bytes, stores, store_bytes)


NONE = _space(0, 0, 0, 0)


def test_counters_copy(counted):
    x, o = torch.arange(16.0), torch.empty(16)
    with counters.record() as launches:
        counted.copy(o, x, threads=16)
    assert len(launches) == 1
    c = launches[0]
    assert (c.kernel, c.threads, c.group_size) == ("copy", (16, 1, 1), (16, 1, 1))
    assert c.device == _space(16, 64, 16, 64)
    assert (c.constant, c.threadgroup, c.atomics) == (NONE, NONE, 0)
    assert torch.equal(o, x)


def test_counters_float4(counted):
    x, o = torch.arange(16.0), torch.empty(16)
    with counters.record() as launches:
        counted.scale4(o, x, threads=4)
    assert launches[0].device == _space(4, 64, 4, 64)


def test_counters_threadgroup_reduction(counted):
    x, o = torch.ones(64), torch.empty(2)
    with counters.record() as launches:
        counted.group_sum(o, x, threads=64, group_size=32)
    c = launches[0]
    assert c.device == _space(64, 256, 2, 8)
    assert c.threadgroup == _space(64, 256, 64, 256)
    assert torch.equal(o, torch.full((2,), 32.0))


def test_counters_atomics_apart(counted):
    c = torch.zeros(1, dtype=torch.int32)
    with counters.record() as launches:
        counted.count(c, threads=8)
    assert (launches[0].atomics, launches[0].atomic_bytes, launches[0].device) == (8, 32, NONE)
    assert int(c) == 8


def test_counters_only_inside_record(counted):
    x, o = torch.arange(4.0), torch.empty(4)
    with counters.record() as outer:
        counted.copy(o, x, threads=4)
        with counters.record() as inner:
            counted.copy(o, x, threads=2)
    counted.copy(o, x, threads=4)
    assert [c.threads[0] for c in outer] == [4, 2]
    assert [c.threads[0] for c in inner] == [2]


def test_checks_variable_parsed():
    assert sanitizer.parse("") is None
    assert sanitizer.parse("memcheck") == sanitizer.Check.MEMCHECK
    assert sanitizer.parse("initcheck, racecheck") == sanitizer.Check.INITCHECK | sanitizer.Check.RACECHECK
    assert sanitizer.parse("all") == sanitizer.Check.INITCHECK | sanitizer.Check.RACECHECK
    with pytest.raises(ValueError, match="MPSK_EMULATOR_CHECKS: unknown check 'memchek'"):
        sanitizer.parse("memchek")


# -- memcheck --------------------------------------------------------------------------------


def test_out_of_bounds_read_near(counted, checks):
    """The issue's case: 16 threads over 8 elements read past x; the fast build returns normally."""
    checks("memcheck")
    x, o = torch.arange(8.0), torch.zeros(16)
    with pytest.raises(KernelError, match=r"kernel 'affine': out-of-bounds read of device buffer 1 .*element 8 of 8"):
        counted.affine(o, x, threads=16)
    assert torch.equal(o, torch.zeros(16))


@pytest.mark.parametrize("distance", [1 << 20, 1 << 30, -(1 << 30)], ids=["1MiB", "1GiB", "-1GiB"])
def test_out_of_bounds_read_far(counted, checks, distance):
    """Far from every buffer, the report names the nearest one (which one depends on where the
    allocator put the staging copies) and the element of it the address would be."""
    checks("memcheck")
    x, o = torch.arange(8.0), torch.zeros(4)
    with pytest.raises(KernelError, match=r"kernel 'read_at': out-of-bounds read of (device|constant) buffer [012] "
                                          r"\(the nearest\): element -?\d+"):
        counted.read_at(o, x, distance // 4, threads=4)


@pytest.mark.parametrize("distance", [1 << 30, -(1 << 30)], ids=["1GiB", "-1GiB"])
def test_out_of_bounds_write_far_is_not_made(counted, checks, distance):
    """A write 1 GiB away is stopped before it is made: the process lives, nothing changes."""
    checks("memcheck")
    x, o = torch.arange(4.0), torch.zeros(4)
    nearest = r"kernel 'write_at': out-of-bounds write of device buffer 0 \(the nearest writable one\)"
    with pytest.raises(KernelError, match=nearest):
        counted.write_at(o, x, distance // 4, threads=4)
    assert torch.equal(o, torch.zeros(4))


def test_in_bounds_twin_passes_memcheck(counted, checks):
    checks("memcheck")
    x, o = torch.arange(8.0), torch.zeros(8)
    counted.read_at(o, x, 0, threads=8)
    assert torch.equal(o, x)


# -- initcheck -------------------------------------------------------------------------------


def test_uninitialized_device_read(counted, checks):
    checks("initcheck")
    x, o = torch.ones(8), torch.empty(8)
    with pytest.raises(KernelError, match=r"read of uninitialized device memory: buffer 0 element 0"):
        counted.accumulate(o, x, threads=8, uninitialized={0})
    counted.accumulate(o.zero_(), x, threads=8)  # initialized by the host: fine
    assert torch.equal(o, x)


def test_written_before_read_passes_initcheck(counted, checks):
    checks("initcheck,racecheck")
    x, o, p = torch.arange(8.0), torch.empty(8), torch.empty(8)
    counted.neighbour(o, p, x, threads=8, uninitialized={0, 1})
    assert torch.equal(p, torch.roll(x, -1))


def test_uninitialized_threadgroup_read(counted, checks):
    checks("initcheck")
    x, o = torch.ones(32), torch.empty(32)
    with pytest.raises(KernelError, match=r"uninitialized threadgroup memory: byte (12[89]|1[3-9]\d|2[0-5]\d) of "
                                          r"threadgroup array 's' \(element (3[2-9]|[4-6]\d) "):
        counted.tg_half_written(o, x, threads=32)


def test_threadgroup_reduction_passes_initcheck(counted, checks):
    checks("initcheck")
    x, o = torch.ones(64), torch.empty(2)
    counted.group_sum(o, x, threads=64, group_size=32, uninitialized={0})
    assert torch.equal(o, torch.full((2,), 32.0))


# -- racecheck -------------------------------------------------------------------------------


def test_race_within_threadgroup(counted, checks):
    checks("racecheck")
    o = torch.zeros(1)
    with pytest.raises(KernelError, match=r"data race on device buffer 0 element 0: thread 1 .* same threadgroup"):
        counted.bump(o, threads=64)
    assert torch.equal(o, torch.zeros(1))


def test_race_across_threadgroups(counted, checks):
    checks("racecheck")
    o = torch.zeros(1)
    with pytest.raises(KernelError, match=r"data race on device buffer 0 element 0: .*another threadgroup"):
        counted.bump(o, threads=4, group_size=1)


def test_atomic_add_is_not_a_race(counted, checks):
    checks("all")
    c = torch.zeros(1, dtype=torch.int32)
    counted.count(c, threads=64, group_size=16)
    assert int(c) == 64
