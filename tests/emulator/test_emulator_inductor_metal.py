"""Inductor's own Metal, as its MPS codegen writes it, runs on the emulator and matches eager.

Each graph is lowered by Inductor for the `mps` device on fake tensors (tests/inductor_metal.py),
and the Python wrapper it generates is executed with CPU tensors: its kernels, compiled with the
c10/metal headers of the installed torch, are launched exactly as the wrapper launches them
(`generated_kernel_N(out, in..., sizes..., threads=..., group_size=..., error_buf_idx=...)`).
"""

import pytest
import torch
import torch.nn.functional as F
from inductor_metal import generate_mps_wrapper, metal_kernels, run_mps_wrapper

from mps_inductor_ext.shaders import KernelError
from mps_inductor_ext.shaders.errors import UndefinedBehaviorWarning


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(*shape, dtype=torch.float32, seed=0):
    return torch.randn(*shape, generator=_gen(seed)).to(dtype)


def _randint(hi, *shape, seed=0):
    return torch.randint(0, hi, shape, generator=_gen(seed))


CASES = {
    "pointwise": (lambda x, y: (x * y + 1).sin() / (y.abs() + 1), lambda: [_randn(8, 16), _randn(8, 16, seed=1)]),
    "row_sum": (lambda x: x.sum(-1), lambda: [_randn(8, 64)]),
    "column_sum": (lambda x: x.sum(0), lambda: [_randn(64, 8)]),
    "long_row_sum": (lambda x: x.sum(-1), lambda: [_randn(4, 5000)]),
    "amax": (lambda x: x.amax(-1), lambda: [_randn(8, 64)]),
    "softmax": (lambda x: torch.softmax(x, -1), lambda: [_randn(8, 64)]),
    "log_softmax_wide": (lambda x: torch.log_softmax(x, -1), lambda: [_randn(2, 3000)]),
    "welford_var": (lambda x: x.var(-1), lambda: [_randn(8, 64)]),
    "layer_norm": (lambda x: F.layer_norm(x, (64,)), lambda: [_randn(8, 64)]),
    "argmax": (lambda x: x.argmax(-1), lambda: [_randn(8, 64)]),
    "gather": (lambda x, i: torch.gather(x, 1, i) + 1, lambda: [_randn(8, 64), _randint(64, 8, 10)]),
    "embedding": (lambda w, i: F.embedding(i, w) * 3, lambda: [_randn(8, 64), _randint(8, 16)]),
    "cat": (lambda x: torch.cat([x.sin(), x.cos()], 1), lambda: [_randn(8, 64)]),
    "scatter_add": (lambda x, i, s: torch.scatter_add(x, 1, i, s), lambda: [_randn(8, 64), _randint(64, 8, 10),
                                                                               _randn(8, 10, seed=2)]),
    "index_add_atomic": (lambda x, i, s: x.index_add(0, i, s), lambda: [_randn(8, 64), _randint(8, 16, seed=3),
                                                                         _randn(16, 64, seed=4)]),
    "fp16_upcast": (lambda x: (x.float().exp() * 2).half(), lambda: [_randn(8, 64, dtype=torch.float16)]),
    "fp16_softmax": (lambda x: torch.softmax(x, -1), lambda: [_randn(8, 64, dtype=torch.float16)]),
    "bf16_sum": (lambda x: x.sum(-1), lambda: [_randn(8, 64, dtype=torch.bfloat16)]),
    "bf16_pointwise": (lambda x: (x * 2).relu() + 1, lambda: [_randn(8, 64, dtype=torch.bfloat16)]),
}

# What a Mac's own result may differ by: reduction order (fp32), one rounding of the output (fp16/bf16).
# Local, not the ops' table (mps_inductor_ext/ops/tolerances.py): these are Inductor's own kernels on
# small pointwise and reduction graphs, held tighter than the mpsk ops in half and bfloat16.
TOLERANCE = {torch.float32: (2e-5, 1e-5), torch.float16: (1e-3, 1e-3), torch.bfloat16: (8e-3, 8e-3)}


@pytest.mark.parametrize("name", sorted(CASES))
def test_inductor_metal_matches_eager(name):
    fn, make_args = CASES[name]
    args = make_args()
    code = generate_mps_wrapper(fn, args)
    assert metal_kernels(code), "the graph must reach Inductor's Metal codegen, not only extern kernels"
    if name == "index_add_atomic":
        assert "atomic_add" in code, "this case exists to run Inductor's atomic scatter"
    out = run_mps_wrapper(code, [a.clone() for a in args])[0]
    ref = fn(*args)
    assert out.dtype == ref.dtype and out.shape == ref.shape
    if ref.is_floating_point():
        atol, rtol = TOLERANCE[ref.dtype]
        torch.testing.assert_close(out, ref, atol=atol, rtol=rtol)
    else:
        assert torch.equal(out, ref)


@pytest.mark.parametrize("shape", [(8, 64), (3, 100), (5, 7), (2, 1500)])
def test_dynamic_shapes_one_wrapper_many_sizes(shape):
    """One wrapper with symbolic sizes (passed as `constant long&`) serves every size."""
    fn = lambda x: torch.softmax(x * 2, -1)  # noqa: E731
    code = _dynamic_softmax_wrapper()
    x = _randn(*shape)
    torch.testing.assert_close(run_mps_wrapper(code, [x])[0], fn(x))


_DYNAMIC = {}


def _dynamic_softmax_wrapper() -> str:
    if "softmax" not in _DYNAMIC:
        _DYNAMIC["softmax"] = generate_mps_wrapper(lambda x: torch.softmax(x * 2, -1), [_randn(8, 64)], dynamic=True)
        assert "s" in _DYNAMIC["softmax"] and "x_1_size" in _DYNAMIC["softmax"]
    return _DYNAMIC["softmax"]


def test_out_of_range_index_is_reported_through_the_error_buffer():
    """Inductor's bounds checks report through c10/metal/error.h; torch raises at the next sync."""
    fn = lambda x, i: torch.gather(x, 1, i)  # noqa: E731
    x, i = _randn(8, 64), _randint(64, 8, 10)
    code = generate_mps_wrapper(fn, [x, i])
    assert "error_buf_idx=" in code
    bad = i.clone()
    bad[2, 3] = 70
    with pytest.raises(KernelError, match=r"reported \d+ error\(s\): Index 70 out of range \[0, 64\)"):
        run_mps_wrapper(code, [x, bad])


def test_int64_row_sum_reads_inactive_lanes_and_says_so():
    """c10's 64-bit simd_sum shuffles from lanes that a prefix-of-lanes call leaves inactive, which
    Metal leaves undefined (torch's own comment: garbage on M1/M2, fine on M4). The emulator
    poisons those reads and warns with the call's name, instead of silently agreeing with eager."""
    x = _randint(200, 8, 64) - 100
    code = generate_mps_wrapper(lambda x: x.sum(-1), [x])
    inactive = r"simd_shuffle_and_fill_down .* read lane \d+, which is inactive"
    with pytest.warns(UndefinedBehaviorWarning, match=inactive):
        out = run_mps_wrapper(code, [x])[0]
    assert not torch.equal(out, x.sum(-1)), "the poisoned lanes must show in the result"


def test_int64_row_sum_shorter_than_a_simd_group_reads_lanes_never_launched():
    """A row of 11 is one threadgroup of 11 threads: c10's 64-bit simd_sum shuffles from lanes 11-31,
    for which no thread was launched (inactive in Metal's terms, so undefined). Inductor's mean
    cross-entropy counts its non-ignored targets this way. The emulator poisons and says so."""
    x = _randint(200, 8, 11) - 100
    code = generate_mps_wrapper(lambda x: x.sum(-1), [x])
    never_launched = r"simd_shuffle_and_fill_down .* read lane 1\d, which is inactive"
    with pytest.warns(UndefinedBehaviorWarning, match=never_launched):
        out = run_mps_wrapper(code, [x])[0]
    assert not torch.equal(out, x.sum(-1))


def test_int64_row_sum_within_one_simd_group_is_exact():
    """With a row of exactly 32 (one full SIMD-group) the second stage never runs, and the sum is exact."""
    x = _randint(200, 8, 32) - 100
    code = generate_mps_wrapper(lambda x: x.sum(-1), [x])
    assert torch.equal(run_mps_wrapper(code, [x])[0], x.sum(-1))
