"""Dispatch attributes on the emulator, with dispatchThreads semantics (smaller edge threadgroups).

Every thread writes all its attributes to the row of its grid position; expected values are
computed in PyTorch from the grid and group shape alone.
"""

import pytest
import torch

HEADER = "#include <metal_stdlib>\nusing namespace metal;\n"

VEC3 = ["thread_position_in_grid", "threadgroup_position_in_grid", "thread_position_in_threadgroup",
        "threads_per_threadgroup", "dispatch_threads_per_threadgroup", "threadgroups_per_grid",
        "threads_per_grid"]
SCALAR = ["thread_index_in_threadgroup", "thread_index_in_simdgroup", "simdgroup_index_in_threadgroup",
          "threads_per_simdgroup", "simdgroups_per_threadgroup"]
COLS = 3 * len(VEC3) + len(SCALAR)


def _source(vec: str, scalar: str) -> str:
    """A kernel taking every attribute in the `vec` (3-D ones) and `scalar` forms."""
    params = ", ".join([f"{vec} a{k} [[{a}]]" for k, a in enumerate(VEC3)]
                       + [f"{scalar} s{k} [[{a}]]" for k, a in enumerate(SCALAR)])
    lanes = {"": 1, "2": 2, "3": 3}[vec[-1] if vec[-1] in "23" else ""]
    comp = "xyz"
    # the thread's row, from thread_position_in_grid (a0) and threads_per_grid (a6)
    row = {1: "a0", 2: "a0.y * a6.x + a0.x", 3: "(a0.z * a6.y + a0.y) * a6.x + a0.x"}[lanes]
    puts = []
    for k in range(len(VEC3)):
        for c in range(3):
            val = (f"a{k}" if lanes == 1 else f"a{k}.{comp[c]}") if c < lanes else "0"
            puts.append(f"o[{3 * k + c}] = float({val});")
    puts += [f"o[{3 * len(VEC3) + k}] = float(s{k});" for k in range(len(SCALAR))]
    return (f"kernel void attrs_{vec}(device float* out [[buffer(0)]], {params}) {{\n"
            f"  device float* o = out + ({row}) * {COLS};\n  " + "\n  ".join(puts) + "\n}\n")


SOURCE = HEADER + "".join(_source(v, s) for v, s in
                          [("uint", "uint"), ("ushort", "ushort"), ("uint2", "uint"), ("ushort2", "ushort"),
                           ("uint3", "uint"), ("ushort3", "ushort")])


def _expected(grid: list[int], group: list[int]) -> torch.Tensor:
    """The attributes of every thread, from Metal's dispatchThreads definitions."""
    grid3 = torch.tensor(grid + [1] * (3 - len(grid)))
    group3 = torch.tensor(group + [1] * (3 - len(group)))
    z, y, x = torch.meshgrid(*(torch.arange(int(n)) for n in grid3.flip(0)), indexing="ij")
    pos = torch.stack([x, y, z], -1).reshape(-1, 3)  # rows in x-fastest order
    gid = pos // group3
    tpos = pos % group3
    actual = torch.minimum(group3, grid3 - gid * group3)  # edge groups are smaller
    ngroups = (grid3 + group3 - 1) // group3
    n = len(pos)
    index = tpos[:, 0] + tpos[:, 1] * actual[:, 0] + tpos[:, 2] * actual[:, 0] * actual[:, 1]
    vec = [pos, gid, tpos, actual, group3.expand(n, 3), ngroups.expand(n, 3), grid3.expand(n, 3)]
    scal = [index, index % 32, index // 32, torch.full((n,), 32), (actual.prod(1) + 31) // 32]
    return torch.cat([v.reshape(n, 3) for v in vec] + [s[:, None] for s in scal], 1).float()


@pytest.mark.parametrize(
    "threads,group",
    [
        ([100], [32]),          # 1-D, last group of 4
        ([1], [1]),
        ([70], [70]),           # one group of three SIMD-groups, the last partial
        ([10, 7], [4, 3]),      # 2-D, edge groups in x and y
        ([40, 3], [33, 2]),     # 2-D, SIMD-groups straddling rows
        ([13, 9, 3], [8, 4, 2]),  # 3-D, 64-thread groups, edges in every dimension
        ([5, 4, 3], [2, 3, 2]),
    ],
)
def test_dispatch_attributes(emulate, threads, group):
    lib = emulate(SOURCE)
    ref = _expected(threads, group)
    ndim = len(threads)
    forms = {1: ["uint", "ushort", "uint2", "ushort2", "uint3", "ushort3"], 2: ["uint2", "ushort2", "uint3", "ushort3"],
             3: ["uint3", "ushort3"]}[ndim]
    for form in forms:
        lanes = int(form[-1]) if form[-1] in "23" else 1
        out = torch.full((ref.shape[0], COLS), float("nan"))
        getattr(lib, f"attrs_{form}")(out, threads=threads, group_size=group)
        # components beyond the declared lanes are written as 0 by the kernel
        want = ref.clone().reshape(-1, COLS)
        for k in range(len(VEC3)):
            want[:, 3 * k + lanes : 3 * k + 3] = 0
        torch.testing.assert_close(out, want, msg=lambda m, f=form: f"{f}: {m}")


def test_scalar_attribute_rejects_multidimensional_dispatch(emulate):
    """A uint thread_position_in_grid on a 2-D dispatch would silently drop y: an error."""
    lib = emulate(SOURCE)
    with pytest.raises(ValueError, match="uint2"):
        lib.attrs_uint(torch.zeros(4 * COLS), threads=[2, 2], group_size=[2, 2])
