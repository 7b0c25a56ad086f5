"""SIMD-group functions and barriers on the emulator, against PyTorch math with Metal's semantics.

Every case runs on full SIMD-groups, several SIMD-groups per threadgroup, a threadgroup of 48
(a partial second SIMD-group) and a non-uniform edge threadgroup (70 threads in groups of 64),
because partial SIMD-groups are where an emulator is most tempted to return plausible numbers.
"""

import warnings

import pytest
import torch
from helpers import nan_like

from mps_inductor_ext.shaders import KernelError
from mps_inductor_ext.shaders.errors import UndefinedBehaviorWarning

SIMD = 32
CONFIGS = [(64, 32), (256, 128), (96, 48), (70, 64)]  # (threads, group_size)

SOURCE = """
#include <metal_stdlib>
using namespace metal;

// One output row per SIMD-group function; x feeds all but simd_prod, which gets y.
template <typename T>
kernel void simd_ops(device T* out [[buffer(0)]], device const T* x [[buffer(1)]],
                     device const T* y [[buffer(2)]], uint i [[thread_position_in_grid]],
                     uint n [[threads_per_grid]], ushort lane [[thread_index_in_simdgroup]]) {
  const T v = x[i];
  out[0 * n + i] = simd_sum(v);
  out[1 * n + i] = simd_prod(y[i]);
  out[2 * n + i] = simd_max(v);
  out[3 * n + i] = simd_min(v);
  out[4 * n + i] = simd_prefix_inclusive_sum(v);
  out[5 * n + i] = simd_prefix_exclusive_sum(v);
  out[6 * n + i] = simd_shuffle(v, ushort((lane * 7 + 3) % 32));
  out[7 * n + i] = simd_shuffle_up(v, ushort(3));
  out[8 * n + i] = simd_shuffle_down(v, ushort(5));
  out[9 * n + i] = simd_shuffle_xor(v, ushort(6));
  out[10 * n + i] = simd_broadcast(v, ushort(5));
  out[11 * n + i] = simd_shuffle_rotate_up(v, ushort(3));
  out[12 * n + i] = simd_shuffle_rotate_down(v, ushort(5));
  out[13 * n + i] = simd_broadcast_first(v);
}
template [[host_name("simd_ops_float")]] [[kernel]] decltype(simd_ops<float>) simd_ops<float>;
template [[host_name("simd_ops_half")]] [[kernel]] decltype(simd_ops<half>) simd_ops<half>;
template [[host_name("simd_ops_int")]] [[kernel]] decltype(simd_ops<int>) simd_ops<int>;
template [[host_name("simd_ops_float4")]] [[kernel]] decltype(simd_ops<float4>) simd_ops<float4>;

kernel void simd_bits(device int* out [[buffer(0)]], device const int* x [[buffer(1)]],
                      uint i [[thread_position_in_grid]], uint n [[threads_per_grid]]) {
  out[0 * n + i] = simd_and(x[i]);
  out[1 * n + i] = simd_or(x[i]);
  out[2 * n + i] = simd_xor(x[i]);
  out[3 * n + i] = simd_all(x[i] > 0);
  out[4 * n + i] = simd_any(x[i] > 0);
}

kernel void bad_shuffle_down(device float* out [[buffer(0)]], uint i [[thread_position_in_grid]],
                             ushort lane [[thread_index_in_simdgroup]]) {
  out[i] = simd_shuffle_down(float(i), ushort(lane & 1));
}
kernel void bad_shuffle_up(device float* out [[buffer(0)]], uint i [[thread_position_in_grid]],
                           ushort lane [[thread_index_in_simdgroup]]) {
  out[i] = simd_shuffle_up(float(i), ushort(lane / 16));
}
kernel void bad_broadcast(device float* out [[buffer(0)]], uint i [[thread_position_in_grid]],
                          ushort lane [[thread_index_in_simdgroup]]) {
  out[i] = simd_broadcast(float(i), ushort(lane / 16));
}
kernel void broadcast_lane7(device float* out [[buffer(0)]], uint i [[thread_position_in_grid]]) {
  out[i] = simd_broadcast(float(i), ushort(7));
}
kernel void divergent_sum(device float* out [[buffer(0)]], uint i [[thread_position_in_grid]],
                          ushort lane [[thread_index_in_simdgroup]]) {
  float v = float(i);
  if (lane < 16) {
    v = simd_sum(v);
  }
  out[i] = v;
}

// The classic tree reduction; Sync=false drops the barrier inside the loop.
template <bool Sync>
kernel void tree_sum(device float* out [[buffer(0)]], device const float* x [[buffer(1)]],
                     uint g [[threadgroup_position_in_grid]], uint tid [[thread_position_in_threadgroup]],
                     uint i [[thread_position_in_grid]], uint n [[threads_per_threadgroup]]) {
  threadgroup float buf[256];
  buf[tid] = x[i];
  threadgroup_barrier(mem_flags::mem_threadgroup);
  for (uint s = n / 2; s > 0; s >>= 1) {
    if (tid < s) {
      buf[tid] += buf[tid + s];
    }
    if (Sync) {
      threadgroup_barrier(mem_flags::mem_threadgroup);
    }
  }
  if (tid == 0) {
    out[g] = buf[0];
  }
}
template [[host_name("tree_sum")]] [[kernel]] decltype(tree_sum<true>) tree_sum<true>;
template [[host_name("tree_sum_racy")]] [[kernel]] decltype(tree_sum<false>) tree_sum<false>;

// The same reduction with no barrier at all (the emulator then runs without fibers).
kernel void tree_sum_unsynced(device float* out [[buffer(0)]], device const float* x [[buffer(1)]],
                              uint g [[threadgroup_position_in_grid]],
                              uint tid [[thread_position_in_threadgroup]], uint i [[thread_position_in_grid]],
                              uint n [[threads_per_threadgroup]]) {
  threadgroup float buf[256];
  buf[tid] = x[i];
  for (uint s = n / 2; s > 0; s >>= 1) {
    if (tid < s) {
      buf[tid] += buf[tid + s];
    }
  }
  if (tid == 0) {
    out[g] = buf[0];
  }
}

// Exchanges across SIMD-groups through device memory, then through both memories at once.
template <bool Sync>
kernel void exchange(device float* out [[buffer(0)]], device float* scratch [[buffer(1)]],
                     device const float* x [[buffer(2)]], uint i [[thread_position_in_grid]],
                     uint tid [[thread_position_in_threadgroup]], uint n [[threads_per_threadgroup]],
                     uint total [[threads_per_grid]]) {
  threadgroup float buf[256];
  const uint base = i - tid;
  scratch[i] = 2.0f * x[i];
  if (Sync) {
    threadgroup_barrier(mem_flags::mem_device);
  }
  const float from_device = scratch[base + n - 1 - tid];
  buf[tid] = 3.0f * x[i];
  scratch[total + i] = 5.0f * x[i];
  if (Sync) {
    threadgroup_barrier(mem_flags::mem_device | mem_flags::mem_threadgroup);
  }
  out[i] = from_device + buf[(tid + 1) % n] + scratch[total + base + (tid + 2) % n];
}
template [[host_name("exchange")]] [[kernel]] decltype(exchange<true>) exchange<true>;
template [[host_name("exchange_racy")]] [[kernel]] decltype(exchange<false>) exchange<false>;

// Lanes read their neighbour's slot within their own SIMD-group.
template <bool Sync>
kernel void simd_exchange(device float* out [[buffer(0)]], device const float* x [[buffer(1)]],
                          uint i [[thread_position_in_grid]], uint tid [[thread_position_in_threadgroup]],
                          ushort lane [[thread_index_in_simdgroup]], uint n [[threads_per_threadgroup]]) {
  threadgroup float buf[256];
  buf[tid] = x[i];
  if (Sync) {
    simdgroup_barrier(mem_flags::mem_threadgroup);
  }
  const uint first = tid - lane;
  const uint m = n - first < 32 ? n - first : 32;
  out[i] = buf[first + (lane + 1) % m];
}
template [[host_name("simd_exchange")]] [[kernel]] decltype(simd_exchange<true>) simd_exchange<true>;
template [[host_name("simd_exchange_racy")]] [[kernel]] decltype(simd_exchange<false>) simd_exchange<false>;
"""

NAN = float("nan")


def simd_groups(threads: int, group: int) -> list[torch.Tensor]:
    """Grid indices of each SIMD-group's lanes, in lane order (the edge threadgroup may be short)."""
    out = []
    for start in range(0, threads, group):
        size = min(group, threads - start)
        out += [torch.arange(start + s, start + min(s + SIMD, size)) for s in range(0, size, SIMD)]
    return out


def reference(x: torch.Tensor, y: torch.Tensor, threads: int, group: int) -> torch.Tensor:
    """Metal's results of simd_ops, in float64, with NaN where Metal leaves the value undefined."""
    x, y = x.double(), y.double()
    ref = torch.full((14, *x.shape), NAN, dtype=torch.float64)
    for idx in simd_groups(threads, group):
        v, m = x[idx], len(idx)
        lane = torch.arange(m)

        def gather(src: torch.Tensor, own_if: torch.Tensor | None = None, v=v, m=m) -> torch.Tensor:
            """v[src], NaN where src names a lane this SIMD-group lacks, v itself where own_if."""
            r = torch.full_like(v, NAN)
            ok = src < m
            r[ok] = v[src[ok]]
            if own_if is not None:
                r[own_if] = v[own_if]
            return r

        ref[0, idx] = v.sum(0)
        ref[1, idx] = y[idx].prod(0)
        ref[2, idx] = v.amax(0)
        ref[3, idx] = v.amin(0)
        ref[4, idx] = v.cumsum(0)
        ref[5, idx] = v.cumsum(0) - v
        ref[6, idx] = gather((lane * 7 + 3) % SIMD)
        ref[7, idx] = gather((lane - 3).clamp(min=0), own_if=lane < 3)  # the lower 3 lanes keep theirs
        ref[8, idx] = gather(lane + 5, own_if=lane + 5 >= SIMD)  # sources past the width keep theirs
        ref[9, idx] = gather(lane ^ 6)
        ref[10, idx] = v[5]
        ref[11, idx] = gather((lane - 3) % SIMD)
        ref[12, idx] = gather((lane + 5) % SIMD)
        ref[13, idx] = v[0]
    return ref


TYPES = {
    "float": (torch.float32, None, dict(rtol=1e-5, atol=1e-5)),
    "half": (torch.float16, None, dict(rtol=3e-2, atol=3e-2)),
    "int": (torch.int32, None, dict(rtol=0, atol=0)),
    "float4": (torch.float32, 4, dict(rtol=1e-5, atol=1e-5)),
}


@pytest.mark.parametrize("threads,group", CONFIGS)
@pytest.mark.parametrize("type_name", list(TYPES))
def test_simd_functions(emulate, type_name, threads, group):
    dtype, width, tol = TYPES[type_name]
    g = torch.Generator().manual_seed(threads + group)
    shape = (threads,) if width is None else (threads, width)
    if dtype.is_floating_point:
        sign = torch.randint(0, 2, shape, generator=g) * 2 - 1
        x = (sign * (0.5 + torch.rand(shape, generator=g))).to(dtype)
        y = (sign * (0.7 + 0.6 * torch.rand(shape, generator=g))).to(dtype)  # products stay in range
    else:
        x = torch.randint(-50, 51, shape, generator=g, dtype=dtype)
        y = torch.tensor([-1, 1, 2], dtype=dtype)[torch.randint(0, 3, shape, generator=g)]
    ref = reference(x, y, threads, group)
    out = torch.full((14, *shape), -7, dtype=dtype) if not dtype.is_floating_point else nan_like(ref.to(dtype))
    kernel = getattr(emulate(SOURCE), f"simd_ops_{type_name}")
    partial = group % SIMD != 0 or threads % group % SIMD != 0
    if partial:  # reads of lanes no thread was launched for are reported, not only poisoned
        with pytest.warns(UndefinedBehaviorWarning, match=r"read lane \d+, which is inactive"):
            kernel(out, x, y, threads=threads, group_size=group)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("error", UndefinedBehaviorWarning)
            kernel(out, x, y, threads=threads, group_size=group)

    undefined = ref.isnan()
    if dtype.is_floating_point:
        # A lane that does not exist reads as NaN, never as a plausible number.
        torch.testing.assert_close(out.double(), ref, equal_nan=True, **tol)
    else:
        assert ref[1].abs().max() < 2**31
        assert (out[undefined] == -1).all(), "reads of missing lanes must give the poison pattern"
        torch.testing.assert_close(out[~undefined].double(), ref[~undefined], **tol)
    # The configurations with partial SIMD-groups must exercise undefined reads at all.
    assert bool(undefined.any()) == partial


@pytest.mark.parametrize("threads,group", CONFIGS)
def test_simd_bitwise_and_votes(emulate, threads, group):
    g = torch.Generator().manual_seed(7)
    x = torch.randint(0, 2**20, (threads,), generator=g, dtype=torch.int32)
    x[::5] -= 2**21  # some negative lanes, so simd_all is false for most groups
    x[:32] = torch.randint(1, 2**20, (32,), generator=g, dtype=torch.int32)  # one all-positive group
    out = torch.full((5, threads), -7, dtype=torch.int32)
    emulate(SOURCE).simd_bits(out, x, threads=threads, group_size=group)
    ref = torch.empty(5, threads, dtype=torch.int64)
    for idx in simd_groups(threads, group):
        v = x[idx].long()
        and_, or_, xor_ = v[0], v[0], v[0]
        for e in v[1:]:
            and_, or_, xor_ = and_ & e, or_ | e, xor_ ^ e
        ref[:, idx] = torch.stack([and_, or_, xor_, (v > 0).all().long(), (v > 0).any().long()])[:, None]
    assert ref[3].any() and not ref[3].all()
    torch.testing.assert_close(out.long(), ref)


@pytest.mark.parametrize(
    "kernel,threads,group,match",
    [
        ("bad_shuffle_down", 64, 64, "uniform"),
        ("bad_shuffle_up", 64, 64, "uniform"),
        ("bad_broadcast", 64, 64, "uniform"),
        ("broadcast_lane7", 70, 64, "not an active lane of this SIMD-group of 6 lanes"),
        ("divergent_sum", 64, 64, "reached by 16 of 32 lanes.*strict mode"),
    ],
)
def test_simd_misuse_is_an_error(emulate, kernel, threads, group, match):
    """Non-uniform delta or lane, a lane that does not exist, or (strict) divergence: errors."""
    out = torch.zeros(threads)
    with pytest.raises(KernelError, match=match):
        getattr(emulate(SOURCE, strict=True), kernel)(out, threads=threads, group_size=group)
    assert (out == 0).all(), "a failed launch leaves its arguments unchanged"


def test_broadcast_lane7_is_fine_where_the_lane_exists(emulate):
    out = torch.full((96,), NAN)
    emulate(SOURCE).broadcast_lane7(out, threads=96, group_size=48)
    ref = torch.cat([torch.full((32,), 7.0), torch.full((16,), 39.0), torch.full((32,), 55.0), torch.full((16,), 87.0)])
    torch.testing.assert_close(out, ref)


def _tree_input(groups: int, n: int) -> torch.Tensor:
    return torch.randn(groups * n, generator=torch.Generator().manual_seed(n))


@pytest.mark.parametrize("n", [32, 64, 256])
def test_tree_reduction_with_barriers(emulate, n):
    x = _tree_input(4, n)
    out = torch.full((4,), NAN)
    emulate(SOURCE).tree_sum(out, x, threads=4 * n, group_size=n)
    torch.testing.assert_close(out, x.view(4, n).double().sum(1).float(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel", ["tree_sum_racy", "tree_sum_unsynced"])
@pytest.mark.parametrize("n", [32, 256])
def test_tree_reduction_without_barrier_is_caught(emulate, kernel, n):
    """Every launch runs under two schedules (thread and threadgroup orders reversed), so a
    missing barrier is an error rather than a sum that is right by luck."""
    x = _tree_input(4, n)
    out = torch.full((4,), NAN)
    with pytest.raises(KernelError, match="another order"):
        getattr(emulate(SOURCE), kernel)(out, x, threads=4 * n, group_size=n)
    assert out.isnan().all()


def test_tree_reduction_without_loop_barrier_is_caught_in_a_single_threadgroup(emulate):
    """One threadgroup whose first schedule happens to be a valid order for the race."""
    x = _tree_input(1, 64)
    out = torch.full((1,), NAN)
    with pytest.raises(KernelError, match="another order"):
        emulate(SOURCE).tree_sum_racy(out, x, threads=64, group_size=64)


@pytest.mark.parametrize("threads,group", [(256, 128), (96, 48), (70, 64)])
def test_threadgroup_barrier_memory_flags(emulate, threads, group):
    """mem_device and mem_device | mem_threadgroup barriers order both memories across SIMD-groups."""
    lib = emulate(SOURCE)
    x = torch.randn(threads, generator=torch.Generator().manual_seed(threads))
    ref = torch.empty(threads)
    for start in range(0, threads, group):
        n = min(group, threads - start)
        xs, t = x[start : start + n], torch.arange(n)
        ref[start : start + n] = 2 * xs[n - 1 - t] + 3 * xs[(t + 1) % n] + 5 * xs[(t + 2) % n]
    out, scratch = nan_like(x), torch.full((2 * threads,), NAN)
    lib.exchange(out, scratch, x, threads=threads, group_size=group)
    torch.testing.assert_close(out, ref)
    out, scratch = nan_like(x), torch.full((2 * threads,), NAN)
    with pytest.raises(KernelError, match="another order"):
        lib.exchange_racy(out, scratch, x, threads=threads, group_size=group)


@pytest.mark.parametrize("threads,group", [(64, 32), (96, 48), (70, 64)])
def test_simdgroup_barrier(emulate, threads, group):
    lib = emulate(SOURCE)
    x = torch.randn(threads, generator=torch.Generator().manual_seed(threads))
    src = torch.cat([idx.roll(-1) for idx in simd_groups(threads, group)])
    out = nan_like(x)
    lib.simd_exchange(out, x, threads=threads, group_size=group)
    torch.testing.assert_close(out, x[src])
    out = nan_like(x)
    with pytest.raises(KernelError, match="another order"):
        lib.simd_exchange_racy(out, x, threads=threads, group_size=group)
