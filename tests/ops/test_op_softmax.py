"""mpsk::softmax: the Metal kernels (emulated) against torch.softmax / torch.log_softmax."""

import pytest
import torch
from helpers import TOLERANCES, assert_close_dtype, launched_variants

import mps_inductor_ext  # noqa: F401  (registers torch.ops.mpsk)
from mps_inductor_ext import config
from mps_inductor_ext.config import SoftmaxPolicy
from mps_inductor_ext.ops.common import poisoned_outputs
from mps_inductor_ext.ops.operands import Operand
from mps_inductor_ext.ops.softmax import softmax_plan, vector_ok

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
ONLINE = SoftmaxPolicy(online_above=16)  # every row longer than 16 takes the online form


def reference(x, dim, log):
    """torch's softmax computed in float64, rounded to x's dtype."""
    fn = torch.log_softmax if log else torch.softmax
    return fn(x.double(), dim).to(x.dtype)


def metal(x, dim, log=False, policy=None):
    changes = {"emulate_metal": True} | ({"softmax": policy} if policy else {})
    with config.patch(**changes), poisoned_outputs():
        return torch.ops.mpsk.softmax(x, dim, log)


def gen(seed):
    return torch.Generator().manual_seed(seed)


def assert_close_nan(got, ref):
    """Like assert_close_dtype, but where torch gives NaN the kernel must give NaN too."""
    tol = TOLERANCES[got.dtype]
    assert got.dtype == ref.dtype
    torch.testing.assert_close(got.float(), ref.float(), rtol=tol, atol=tol, equal_nan=True)


@pytest.mark.parametrize("log", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cols", [1, 7, 10, 64, 4100])
def test_last_dim_matches_torch(dtype, log, cols):
    """D = 1, odd, not a multiple of 4, vector-aligned, and > 4096 (the online form by default)."""
    x = (3 * torch.randn(3, cols, generator=gen(cols))).to(dtype)
    assert_close_dtype(metal(x, -1, log), reference(x, -1, log))


@pytest.mark.parametrize("log", [False, True])
@pytest.mark.parametrize("cols", [17, 130, 1000])
def test_online_form(log, cols):
    """Rows above online_above, with 32 threads so each thread folds many columns into its running state."""
    x = 4 * torch.randn(4, cols, generator=gen(cols))
    policy = SoftmaxPolicy(online_above=16, threads_per_row=32)
    with launched_variants() as variants:
        got = metal(x, -1, log, policy)
    assert [v.defines["NREG"] for v in variants] == ["0"]  # the online form ran
    assert_close_dtype(got, reference(x, -1, log))


@pytest.mark.parametrize("log", [False, True])
def test_online_rescaling_with_monotone_rows(log):
    """An increasing row rescales the running sum at every element; a decreasing one never does."""
    up = torch.linspace(-30, 30, 300)
    x = torch.stack([up, up.flip(0)])
    policy = SoftmaxPolicy(online_above=16, threads_per_row=32, vector_width=1)
    assert_close_dtype(metal(x, -1, log, policy), reference(x, -1, log))


@pytest.mark.parametrize("log", [False, True])
def test_register_form_with_several_loads_per_thread(log):
    """32 threads over 200 columns: 7 register loads per thread."""
    x = torch.randn(3, 200, generator=gen(5))
    policy = SoftmaxPolicy(threads_per_row=32, vector_width=1)
    plan = softmax_plan(torch.float32, 3, 200, 1, (200, 1, 1), (200, 1, 1), log=log, vector_ok=False, policy=policy)
    assert "#define NREG 7" in plan.launches[0].source
    assert_close_dtype(metal(x, -1, log, policy), reference(x, -1, log))


@pytest.mark.parametrize("policy", [None, ONLINE], ids=["registers", "online"])
@pytest.mark.parametrize("log", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_large_magnitudes(dtype, log, policy):
    """Values near 1e4: without max subtraction exp overflows; log_softmax must keep (x - max) exact."""
    x = (1e4 + 10 * torch.randn(3, 64, generator=gen(11))).to(dtype)
    x[1] = -x[1]
    assert_close_dtype(metal(x, -1, log, policy), reference(x, -1, log))


@pytest.mark.parametrize("policy", [None, ONLINE], ids=["registers", "online"])
@pytest.mark.parametrize("log", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_infinite_rows(log, policy, dtype, math_mode):
    """All -inf gives NaN as in torch, and so does a row holding +inf or NaN; a partly -inf row
    gives 0 (softmax) or -inf (log) there, also when its first elements are -inf (left padding).
    Under fast math too."""
    x = torch.randn(6, 40, generator=gen(2))
    x[0] = float("-inf")
    x[1, ::3] = float("-inf")
    x[2, 5:] = float("-inf")
    x[3, 7] = float("inf")
    x[4, :30] = float("-inf")
    x[5, 11] = float("nan")
    x = x.to(dtype)
    ref = reference(x, -1, log)
    assert ref[0].isnan().all() and ref[3].isnan().all() and ref[5].isnan().all()
    assert not ref[1:3].isnan().any() and not ref[4].isnan().any()
    assert_close_nan(metal(x, -1, log, policy), ref)


@pytest.mark.parametrize("policy", [None, ONLINE], ids=["registers", "online"])
@pytest.mark.parametrize("log", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_lowest_finite_rows(log, policy, dtype):
    """The lowest finite value (Hugging Face's padding fill) is a value, not a hidden element: a row
    of it is uniform, and beside -inf it still counts (the kernel's -inf sentinel is finite too)."""
    x = torch.randn(3, 40, generator=gen(3)).to(dtype)
    low = torch.finfo(dtype).min
    x[0] = low
    x[1, :20] = low
    x[2, :20] = low
    x[2, 20:] = float("-inf")
    assert_close_nan(metal(x, -1, log, policy), reference(x, -1, log))


@pytest.mark.parametrize("policy", [None, ONLINE], ids=["registers", "online"])
@pytest.mark.parametrize("log", [False, True])
@pytest.mark.parametrize("dim", [0, 1, -2, 2])
def test_other_dims_of_a_3d_tensor(dim, log, policy):
    x = torch.randn(5, 33, 20, generator=gen(dim + 10))
    got = metal(x, dim, log, policy)
    assert got.is_contiguous()
    assert_close_dtype(got, reference(x, dim, log))


@pytest.mark.parametrize(
    "make",
    [
        lambda b: b[1:, 3:67],  # storage offset 67 (misaligned for 4-wide loads), row stride 72
        lambda b: b[:, 4:68],  # offset 4, aligned: 4-wide loads through a row stride of 72
        lambda b: b.t()[:64, :5],  # column stride 72 along the softmax dim
        lambda b: b[:, :1].expand(6, 64),  # stride 0 along the softmax dim
        lambda b: b.view(6, 8, 9).transpose(0, 1)[:, :, 2:],  # dims that do not merge: copied first
    ],
    ids=["offset", "offset_aligned", "transposed", "expanded", "unmergeable"],
)
@pytest.mark.parametrize("dtype", DTYPES)
def test_non_contiguous_inputs(dtype, make):
    x = make((4 * torch.randn(6, 72, generator=gen(3))).to(dtype))
    for dim, log in [(-1, False), (-1, True), (0, False)]:
        assert_close_dtype(metal(x, dim, log), reference(x, dim, log))


def test_vector_loads_only_when_aligned():
    """The emulator does not fault on misaligned vector loads (on Metal they are undefined), so
    the host's alignment decision is checked here directly."""
    s = torch.randn(1000)
    assert vector_ok(Operand.of(s.as_strided((6, 64, 1), (72, 1, 1), 4)))
    assert vector_ok(Operand.of(s.as_strided((1, 64, 1), (64, 1, 1), 0)))
    assert not vector_ok(Operand.of(s.as_strided((5, 64, 1), (72, 1, 1), 75)))  # storage offset
    assert not vector_ok(Operand.of(s.as_strided((6, 64, 1), (72, 1, 1), 2)))
    assert not vector_ok(Operand.of(s.as_strided((6, 62, 1), (72, 1, 1), 0)))  # row length
    assert not vector_ok(Operand.of(s.as_strided((6, 64, 1), (66, 1, 1), 0)))  # row stride
    assert not vector_ok(Operand.of(s.as_strided((1, 64, 1), (64, 0, 1), 0)))  # column stride 0
    assert not vector_ok(Operand.of(s.as_strided((1, 64, 1), (1, 4, 1), 0)))  # column stride 4
    assert not vector_ok(Operand.of(s.as_strided((3, 64, 2), (128, 2, 1), 0)))  # inner > 1


def test_plan_variants():
    aligned = softmax_plan(torch.float32, 2, 64, 1, (68, 1, 1), (64, 1, 1), log=False, vector_ok=True,
                           policy=SoftmaxPolicy())
    scalar = softmax_plan(torch.float32, 2, 64, 1, (68, 1, 1), (64, 1, 1), log=False, vector_ok=True,
                          policy=SoftmaxPolicy(vector_width=1))
    online = softmax_plan(torch.float32, 2, 4097, 1, (4097, 1, 1), (4097, 1, 1), log=True, vector_ok=False,
                          policy=SoftmaxPolicy())
    assert "#define VEC 4" in aligned.launches[0].source and "#define NREG 1" in aligned.launches[0].source
    assert "#define VEC 1" in scalar.launches[0].source
    assert "#define NREG 0" in online.launches[0].source and "#define LOG 1" in online.launches[0].source
    at_limit = softmax_plan(torch.float32, 2, 4096, 1, (4096, 1, 1), (4096, 1, 1), log=True, vector_ok=False,
                            policy=SoftmaxPolicy())
    assert "#define NREG 4" in at_limit.launches[0].source and at_limit.launches[0].group_size == (1024,)


@pytest.mark.parametrize("shape,dim", [((0, 5), -1), ((3, 0), -1), ((3, 0), 0), ((2, 0, 4), 2)])
def test_empty(shape, dim):
    x = torch.randn(shape)
    got = metal(x, dim)
    assert got.shape == x.shape and got.dtype == x.dtype


def test_zero_dim_input():
    x = torch.tensor(2.5)
    assert_close_dtype(metal(x, 0), torch.softmax(x, 0))
    assert_close_dtype(metal(x, -1, True), torch.log_softmax(x, -1))


@pytest.mark.parametrize(
    "x,dim,error,match",
    [
        (torch.ones(3, 4, dtype=torch.int64), -1, TypeError, "input must be float32, float16 or bfloat16"),
        (torch.ones(3, 4, dtype=torch.bool), -1, TypeError, "input must be float32"),
        (torch.ones(3, 4), 2, ValueError, "dim 2 is out of range"),
        (torch.ones(3, 4), -3, ValueError, "dim -3 is out of range"),
        (torch.tensor(1.0), 1, ValueError, "dim 1 is out of range"),
    ],
)
def test_bad_inputs(x, dim, error, match):
    for emulate in (False, True):
        with config.patch(emulate_metal=emulate), pytest.raises(error, match=match):
            torch.ops.mpsk.softmax(x, dim)


def test_float64_on_mps_is_rejected():
    """Checked in the fake implementation too, so a Mac's compile fails early; MPS tensors faked here."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x = torch.empty(3, 4, dtype=torch.float64, device="mps")
        with pytest.raises(TypeError, match="input is float64, which MPS does not support"):
            torch.ops.mpsk.softmax(x, -1)


def test_policy_is_validated():
    with pytest.raises(ValueError, match="vector_width must be 1 or 4"):
        SoftmaxPolicy(vector_width=2)
    with pytest.raises(ValueError, match="online_above must be a positive int"):
        SoftmaxPolicy(online_above=0)
    with pytest.raises(ValueError, match="threads_per_row must be a multiple of 32"):
        SoftmaxPolicy(threads_per_row=48)
    with pytest.raises(TypeError, match="config.softmax must be a SoftmaxPolicy"):
        config.softmax = {"online_above": 16}


def test_backward_through_the_kernel_matches_torch():
    x = torch.randn(4, 37, generator=gen(4), requires_grad=True)
    g = torch.randn(4, 37, generator=gen(5))
    for log in (False, True):
        fn = torch.log_softmax if log else torch.softmax
        (want,) = torch.autograd.grad(fn(x, 0), x, g)
        (got,) = torch.autograd.grad(metal(x, 0, log), x, g)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


OPCHECK_CASES = [
    ((3, 10), torch.float32, -1, False, False),
    ((3, 10), torch.float32, -1, True, False),
    ((2, 5, 6), torch.float32, 1, False, False),
    ((6, 5, 2), torch.float32, 0, True, True),
    ((4, 8), torch.float16, -1, False, False),
    ((4, 8), torch.float64, 0, True, False),
]


@pytest.mark.parametrize("emulate", [False, True], ids=["aten", "emulated"])
@pytest.mark.parametrize("case", range(len(OPCHECK_CASES)))
def test_opcheck(case, emulate):
    shape, dtype, dim, log, transpose = OPCHECK_CASES[case]
    x = torch.randn(shape, generator=gen(case)).to(dtype)
    x = (x.transpose(0, -1) if transpose else x).requires_grad_()
    with config.patch(emulate_metal=emulate):
        torch.library.opcheck(torch.ops.mpsk.softmax.default, (x, dim, log))


@pytest.mark.parametrize("log", [False, True])
@pytest.mark.parametrize("dim", [0, -1])
def test_gradcheck(dim, log):
    x = torch.randn(3, 6, dtype=torch.float64, generator=gen(6), requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: torch.ops.mpsk.softmax(t, dim, log), (x,))
    assert torch.autograd.gradgradcheck(lambda t: torch.ops.mpsk.softmax(t, dim, log), (x,))
