"""mpsk::quantized_linear: the ATen reference (the CPU default) and the Metal kernel (emulated)
against x @ W^T in float64, W decoded from the format's documented bytes (tests/helpers.py)."""

from __future__ import annotations

import pytest
import torch
from helpers import TOLERANCES, dequantize_from_bytes, launched_variants

import mps_inductor_ext  # noqa: F401  (registers torch.ops.mpsk)
from mps_inductor_ext import config
from mps_inductor_ext.config import QuantizedPolicy
from mps_inductor_ext.ops.common import METAL_DTYPES, poisoned_outputs
from mps_inductor_ext.ops.quantized import quantized_linear_reference
from mps_inductor_ext.quantization import quantize_weight

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
op = torch.ops.mpsk.quantized_linear


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def weights(n: int, k: int, group_size: int = 64, bits: int = 4, dtype=torch.float32, seed: int = 0, bias=False):
    """(w_packed, scales, biases, bias) of a random (n, k) weight."""
    w = torch.randn(n, k, generator=gen(seed)).to(dtype)
    b = torch.randn(n, generator=gen(seed + 1)).to(dtype) if bias else None
    return (*quantize_weight(w, group_size, bits), b)


def activations(rows: int, k: int, dtype=torch.float32, seed: int = 2) -> torch.Tensor:
    """Scaled so outputs are O(1) whatever K: tolerances stay the dtype's."""
    return (torch.randn(rows, k, generator=gen(seed)) / k**0.5).to(dtype)


def expected(x, w_packed, scales, biases, group_size, bits, bias=None) -> torch.Tensor:
    """x @ W^T (+ bias) in float64, rounded once to x's dtype."""
    w = dequantize_from_bytes(w_packed, scales, biases, group_size, bits)
    out = x.double() @ w.T
    if bias is not None:
        out = out + bias.double()
    return out.to(x.dtype)


def check(got: torch.Tensor, want: torch.Tensor) -> None:
    tol = TOLERANCES[got.dtype]
    assert got.dtype == want.dtype and got.shape == want.shape
    torch.testing.assert_close(got.float(), want.float(), rtol=tol, atol=tol)


def metal(*args, policy: QuantizedPolicy | None = None, kernel: str | None = None):
    """The op on the emulated kernels (NaN-poisoned output), asserted to have launched one kernel,
    `kernel` ("matvec" or "matmul") when given, unless the result is empty."""
    changes = {"emulate_metal": True} | ({"quantized": policy} if policy else {})
    with config.patch(**changes), poisoned_outputs(), launched_variants() as seen:
        out = op(*args)
    names = [v.kernel for v in seen]
    if out.numel() == 0:
        assert names == []
    else:
        kinds = [kernel] if kernel else ["matvec", "matmul"]
        assert len(names) == 1 and names[0] in [f"quantized_{k}_{METAL_DTYPES[out.dtype]}" for k in kinds], names
    return out


def kernel_for(rows: int) -> str:
    """The kernel the default policy picks."""
    return "matvec" if rows <= QuantizedPolicy().matvec_max_rows else "matmul"


# ---------------------------------------------------------------- the op and its reference


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("dtype", DTYPES)
def test_cpu_default_is_the_reference(dtype, bits):
    w_packed, scales, biases, bias = weights(48, 128, 32, bits, dtype, bias=True)
    x = activations(5, 128, dtype).view(5, 1, 128).expand(5, 2, 128)
    with launched_variants() as seen:
        got = op(x, w_packed, scales, biases, 32, bits, bias)
    assert seen == []  # ATen math, no kernel
    assert got.shape == (5, 2, 48)
    check(got, expected(x, w_packed, scales, biases, 32, bits, bias))
    assert torch.equal(got, quantized_linear_reference(x, w_packed, scales, biases, 32, bits, bias))


def test_gradcheck():
    """Backward w.r.t. x (and the scales, biases and bias, for callers who train them) in float64."""
    w_packed, scales, biases, bias = (t.double() if t.is_floating_point() else t
                                      for t in weights(6, 64, 32, 4, bias=True))
    x = torch.randn(2, 3, 64, dtype=torch.float64, generator=gen(3))
    inputs = tuple(t.clone().requires_grad_() for t in (x, scales, biases, bias))

    def f(x, scales, biases, bias):
        return op(x, w_packed, scales, biases, 32, 4, bias)

    assert torch.autograd.gradcheck(f, inputs)


@pytest.mark.parametrize("emulate", [False, True], ids=["aten", "emulated"])
@pytest.mark.parametrize("bias", [False, True])
def test_opcheck(bias, emulate):
    w_packed, scales, biases, b = weights(24, 128, 64, 4, bias=bias)
    x = activations(3, 128).requires_grad_()
    with config.patch(emulate_metal=emulate):
        torch.library.opcheck(op.default, (x, w_packed, scales, biases, 64, 4, b))


def test_backward_through_the_kernel():
    """Under emulation the forward is the kernel; dx is grad @ W whatever ran forward."""
    w_packed, scales, biases, _ = weights(40, 256, 128, 4)
    x = activations(3, 256).requires_grad_()
    with config.patch(emulate_metal=True), launched_variants() as seen:
        out = op(x, w_packed, scales, biases, 128, 4)
    assert [v.kernel for v in seen] == ["quantized_matvec_float"]
    grad = torch.randn(out.shape, generator=gen(4))
    out.backward(grad)
    w = dequantize_from_bytes(w_packed, scales, biases, 128, 4)
    torch.testing.assert_close(x.grad.double(), grad.double() @ w, rtol=1e-5, atol=1e-5)


def test_input_checks():
    w_packed, scales, biases, bias = weights(8, 64, 32, 4, bias=True)
    x = activations(2, 64)
    cases = [
        ((x, w_packed, scales, biases, 48, 4, None), ValueError, "group_size must be one of"),
        ((x, w_packed, scales, biases, 32, 3, None), ValueError, "bits must be one of"),
        ((x, w_packed.to(torch.int64), scales, biases, 32, 4, None), TypeError, "w_packed must be a 2-D int32"),
        ((x, w_packed, scales, biases, 32, 8, None), ValueError, "holds 32 8-bit values per row, but x has K=64"),
        ((activations(2, 96), w_packed, scales, biases, 64, 4, None), ValueError, "96 is not a multiple of"),
        ((x, w_packed, scales.half(), biases, 32, 4, None), TypeError, "scales is torch.float16 but x"),
        ((x, w_packed, scales, biases[:, :1], 32, 4, None), ValueError, r"biases must have shape .* \(8, 2\)"),
        ((x, w_packed, scales, biases, 32, 4, bias[:5]), ValueError, "bias has 5 elements but the weight has N=8"),
        ((x.to(torch.int32), w_packed, scales, biases, 32, 4, None), TypeError, "x must be float32"),
    ]
    for emulate in (False, True):
        for args, error, match in cases:
            with config.patch(emulate_metal=emulate), pytest.raises(error, match=match):
                op(*args)


# ---------------------------------------------------------------- the Metal kernel (emulated)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", [1, 3, 8, 64, 257])
def test_kernel_rows(rows, dtype):
    """Decode (the matvec on one block of `rows` rows) and prefill (the matmul's 32 x 32 tiles, the
    last ones partial in rows and in N = 72)."""
    w_packed, scales, biases, bias = weights(72, 256, 64, 4, dtype, seed=rows, bias=rows % 2 == 1)
    x = activations(rows, 256, dtype)
    with launched_variants() as seen:
        got = metal(x, w_packed, scales, biases, 64, 4, bias, kernel=kernel_for(rows))
    check(got, expected(x, w_packed, scales, biases, 64, 4, bias))
    if rows <= 8:
        assert seen[0].defines["ROWS"] == str(rows)


@pytest.mark.parametrize("rows", [3, 20])
def test_kernel_either_form_serves_any_rows(rows):
    """The policy moves the boundary: 20 rows on the matvec (three blocks of 8), 3 on the matmul."""
    policy = QuantizedPolicy(matvec_max_rows=32 if rows > 8 else 2)
    w_packed, scales, biases, bias = weights(40, 128, 32, 4, seed=12, bias=True)
    x = activations(rows, 128)
    got = metal(x, w_packed, scales, biases, 32, 4, bias, policy=policy, kernel="matvec" if rows > 8 else "matmul")
    check(got, expected(x, w_packed, scales, biases, 32, 4, bias))


@pytest.mark.parametrize("rows", [3, 40])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_kernel_formats(group_size, bits, dtype, rows):
    """Both kernels; N = 75 is not a multiple of a threadgroup's outputs (8 or 32): the last is partial."""
    w_packed, scales, biases, bias = weights(75, 384, group_size, bits, dtype, seed=group_size + bits, bias=True)
    x = activations(rows, 384, dtype)
    with launched_variants() as seen:
        got = metal(x, w_packed, scales, biases, group_size, bits, bias, kernel=kernel_for(rows))
    check(got, expected(x, w_packed, scales, biases, group_size, bits, bias))
    assert (seen[0].defines["BITS"], seen[0].defines["GROUP_SIZE"]) == (str(bits), str(group_size))


@pytest.mark.parametrize("rows,k,n,group_size", [
    (1, 11008, 64, 128),   # a long row: 43 steps of 256 values per lane
    (3, 64, 11008, 32),    # many outputs, K shorter than one step of the SIMD-group
    (1, 4096, 4096, 64),
    (40, 11008, 64, 128),  # the matmul over 344 slices of K
])
def test_kernel_large_shapes(rows, k, n, group_size):
    w_packed, scales, biases, _ = weights(n, k, group_size, 4, seed=k)
    x = activations(rows, k)
    got = metal(x, w_packed, scales, biases, group_size, 4, kernel=kernel_for(rows))
    check(got, expected(x, w_packed, scales, biases, group_size, 4))


@pytest.mark.slow
@pytest.mark.parametrize("rows,k,n,dtype", [
    (8, 4096, 11008, torch.float16),
    (1, 11008, 4096, torch.bfloat16),
    (257, 1024, 1024, torch.float32),
    (64, 11008, 512, torch.float16),
])
def test_kernel_llama_sized_shapes(rows, k, n, dtype):
    w_packed, scales, biases, _ = weights(n, k, 64, 4, dtype, seed=n)
    x = activations(rows, k, dtype)
    got = metal(x, w_packed, scales, biases, 64, 4, kernel=kernel_for(rows))
    check(got, expected(x, w_packed, scales, biases, 64, 4))


@pytest.mark.parametrize("dtype", DTYPES)
def test_kernel_strided_x(dtype):
    """x read through its strides by both kernels: transposes (column stride != 1) at a storage
    offset, row slices with a row stride past K, and a 3-D permuted x (copied to rows)."""
    w_packed, scales, biases, bias = weights(40, 128, 32, 4, dtype, seed=7, bias=True)
    base = activations(2 * 128, 24, dtype, seed=8).reshape(2, 128, 24)
    wide = activations(20, 300, dtype, seed=9)
    xs = [base[1, :, 1:5].T, base[1, :, 1:21].T, wide[:5, 100:228], wide[:, 100:228], base.permute(0, 2, 1)]
    assert xs[0].stride(1) != 1 and xs[0].storage_offset() and xs[2].stride(0) == 300
    for x in xs:
        got = metal(x, w_packed, scales, biases, 32, 4, bias)
        assert got.is_contiguous()
        check(got, expected(x.reshape(-1, 128), w_packed, scales, biases, 32, 4, bias).reshape(got.shape))


@pytest.mark.parametrize("policy", [QuantizedPolicy(simdgroups=1, outputs_per_simdgroup=1, matvec_max_rows=16),
                                    QuantizedPolicy(simdgroups=4, outputs_per_simdgroup=8, matvec_max_rows=16)])
def test_kernel_policies(policy):
    w_packed, scales, biases, bias = weights(70, 256, 64, 4, seed=10, bias=True)
    x = activations(9, 256)
    with launched_variants() as seen:
        got = metal(x, w_packed, scales, biases, 64, 4, bias, policy=policy, kernel="matvec")
    check(got, expected(x, w_packed, scales, biases, 64, 4, bias))
    assert seen[0].defines["OUTS"] == str(policy.outputs_per_simdgroup)


@pytest.mark.parametrize("rows,k,n", [(0, 64, 8), (3, 64, 0), (3, 0, 8)])
def test_kernel_empty(rows, k, n):
    """No rows or no outputs: an empty result, no launch. No features (K = 0): the bias alone."""
    w_packed = torch.zeros(n, k // 8, dtype=torch.int32)
    scales = biases = torch.zeros(n, k // 32)
    bias = torch.randn(n, generator=gen(11))
    x = torch.randn(rows, k)
    got = metal(x, w_packed, scales, biases, 32, 4, bias)
    assert got.shape == (rows, n)
    torch.testing.assert_close(got, bias.expand(rows, n))
