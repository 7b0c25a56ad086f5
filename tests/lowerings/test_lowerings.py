"""backend="mpsk" lowers the mpsk ops to Metal kernel launches in Inductor's generated Python wrapper.

A small Hugging Face-style block (RMSNorm, rotate_half RoPE, causal SDPA, a softmax over a
fixed-width projection) is compiled with the Metal kernels on the CPU emulator. The checks:
the generated module defines the shader libraries and drives each kernel through
start_encoding / set_arg_tensor / set_arg_int / dispatch, never calling `torch.ops.mpsk.*` or
the ops' Python implementation (`run_plan`); results equal eager PyTorch; a dynamic sequence
length runs two lengths from one compilation; backward matches eager. Off Metal (no
emulation) the same ops decompose into ATen math that Inductor compiles.
"""

from __future__ import annotations

import contextlib
import re
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from helpers import TOLERANCES
from torch._inductor.utils import run_and_get_code

import mps_inductor_ext as mpsk
from mps_inductor_ext import lowerings
from mps_inductor_ext.backend import mpsk_backend
from mps_inductor_ext.ops import norm, operands
from mps_inductor_ext.shaders import KernelFunction

HIDDEN, HEADS, HEAD_DIM, CLASSES = 64, 4, 16, 8
SEQ, SEQ2 = 12, 9  # both above decode_max_q: one prefill variant serves both lengths
TOL = TOLERANCES[torch.float32]
KERNELS = ("rms_norm_float", "rope_qk_float", "attn_prefill_float", "softmax_float")


class Block(torch.nn.Module):
    """RMSNorm -> q/k/v -> rotate_half RoPE -> causal SDPA -> projection -> softmax, written as HF does."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(HIDDEN))
        self.qkv = torch.nn.Linear(HIDDEN, 3 * HIDDEN, bias=False)
        self.head = torch.nn.Linear(HIDDEN, CLASSES, bias=False)
        self.register_buffer("inv_freq", 1.0 / 10000 ** (torch.arange(0, HEAD_DIM, 2).float() / HEAD_DIM))

    @staticmethod
    def rotate_half(x):
        x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
        return torch.cat((-x2, x1), dim=-1)

    def forward(self, x):
        b, s, _ = x.shape
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)
        h = self.weight * h.to(x.dtype)
        q, k, v = (t.view(b, s, HEADS, HEAD_DIM).transpose(1, 2) for t in self.qkv(h).chunk(3, dim=-1))
        freqs = torch.outer(torch.arange(s, dtype=torch.float32), self.inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos()[None, None], emb.sin()[None, None]
        q = q * cos + self.rotate_half(q) * sin
        k = k * cos + self.rotate_half(k) * sin
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return torch.softmax(self.head(a.transpose(1, 2).reshape(b, s, HIDDEN)), dim=-1)


@contextlib.contextmanager
def kernel_calls():
    """Counts `run_plan` calls (the ops' Python implementation: every eager launch goes through it)
    and KernelFunction.dispatch calls by kernel name (whoever drives the shader runtime)."""
    calls = {"run_plan": 0, "dispatch": {}}
    real_dispatch = KernelFunction.dispatch

    def dispatch(self, *args, **kwargs):
        calls["dispatch"][self.name] = calls["dispatch"].get(self.name, 0) + 1
        return real_dispatch(self, *args, **kwargs)

    def spy(*args, _real=operands.run_plan, **kwargs):
        calls["run_plan"] += 1
        return _real(*args, **kwargs)

    with mock.patch.object(operands, "run_plan", spy), mock.patch.object(KernelFunction, "dispatch", dispatch):
        yield calls


def counting_backend():
    """backend="mpsk" that counts its compilations (a recompilation would add one)."""
    compiled = []

    def backend(gm, example_inputs):
        compiled.append(gm)
        return mpsk_backend(gm, example_inputs)

    return backend, compiled


def inputs(length: int, seed: int = 0) -> torch.Tensor:
    torch.manual_seed(seed)
    return torch.randn(2, length, HIDDEN)


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Lowerings installed for each test and removed after it, as a fresh process would start."""
    torch._dynamo.reset()
    mpsk.reset_counters()
    lowerings.install()
    try:
        with torch._inductor.config.patch(fx_graph_cache=False):
            yield
    finally:
        lowerings.uninstall()
        torch._dynamo.reset()


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Block()


def test_generated_wrapper_launches_the_metal_kernels(model):
    x = inputs(SEQ)
    ref = model(x)
    with mpsk.config.patch(emulate_metal=True), torch.no_grad(), kernel_calls() as calls:
        got, codes = run_and_get_code(torch.compile(model, backend="mpsk"), x)
    code = "\n".join(codes)
    assert dict(mpsk.counters) == {"rms_norm": 1, "rope_qk": 1, "attention": 1, "softmax": 1}
    assert "torch.ops.mpsk." not in code
    assert calls["run_plan"] == 0
    assert calls["dispatch"] == {"rms_norm_float": 1, "rope_qk_float": 1, "attn_prefill_float": 1, "softmax_float": 1}
    assert "from mps_inductor_ext.shaders import ShaderLibrary" in code
    assert len(re.findall(r"^mpsk_lib_\d+ = ShaderLibrary\(", code, re.M)) == len(KERNELS)
    for kernel in KERNELS:
        fn = re.search(rf"^(\w+) = mpsk_lib_\d+\.get_kernel_function\('{kernel}'\)", code, re.M).group(1)
        for call in ("start_encoding()", "set_arg_tensor(0, ", "set_arg_int(", "dispatch(["):
            assert f"{fn}.{call}" in code, (kernel, call)
        assert f"{fn}.run_command_block(" in code
    torch.testing.assert_close(got, ref, rtol=TOL, atol=TOL)


def test_cpp_wrapper_launches_the_metal_kernels_through_the_shim(model):
    """cpp_wrapper=True: the C++ wrapper calls the aoti_torch_mps_* shim (emulated here), which runs
    the same kernels; no custom-op fallback is called."""
    x = inputs(SEQ)
    ref = model(x)
    with mpsk.config.patch(emulate_metal=True), torch.no_grad(), kernel_calls() as calls:
        fn = torch.compile(model, backend="mpsk", options={"cpp_wrapper": True})
        got, codes = run_and_get_code(fn, x)
    code = "\n".join(codes)
    assert calls["run_plan"] == 0
    assert calls["dispatch"] == {"rms_norm_float": 1, "rope_qk_float": 1, "attn_prefill_float": 1, "softmax_float": 1}
    assert code.count("aoti_torch_mps_run_command_block(mpsk_lib_") == 4
    assert "mpsk::" not in code
    torch.testing.assert_close(got, ref, rtol=TOL, atol=TOL)


def test_arguments_follow_the_plan(model):
    """The rms_norm call site binds exactly the plan's arguments: indices, kinds, ints and grid."""
    x = inputs(SEQ)
    with mpsk.config.patch(emulate_metal=True), torch.no_grad():
        _, codes = run_and_get_code(torch.compile(model, backend="mpsk"), x)
        plan = norm.norm_plan("rms_norm", torch.float32, 2 * SEQ, HIDDEN, HIDDEN, HIDDEN, has_weight=True,
                              has_bias=False, eps=1e-6, vector_ok=False, policy=mpsk.config.norm)
    code = "\n".join(codes)
    fn = re.search(r"^(\w+) = mpsk_lib_\d+\.get_kernel_function\('rms_norm_float'\)", code, re.M).group(1)
    bound = re.findall(rf"{fn}\.set_arg_(tensor|int)\((\d+), (\w+)\)", code)
    (launch,) = plan.launches
    expected = [("tensor" if isinstance(a, norm.TensorArg) else "int", str(i)) for i, a in enumerate(launch.args)]
    assert [(kind, idx) for kind, idx, _ in bound] == expected
    assert [v for kind, _, v in bound if kind == "int"] == [str(a.value) for a in launch.args
                                                            if isinstance(a, norm.IntArg)]
    assert f"{fn}.dispatch([{launch.threads[0]}], [{launch.group_size[0]}])" in code


@pytest.mark.parametrize("emulate", [False, True])
def test_lowering_follows_the_device(emulate):
    """A direct mpsk op call: Metal launches under emulation, else its ATen math compiled by Inductor
    (no call of the op)."""
    q, k, v = (torch.randn(1, 2, SEQ, HEAD_DIM) for _ in range(3))
    fn = torch.compile(lambda q, k, v: torch.ops.mpsk.attention(q, k, v, None, None, True), backend="inductor")
    with mpsk.config.patch(emulate_metal=emulate):
        got, codes = run_and_get_code(fn, q, k, v)
    code = "\n".join(codes)
    assert ("ShaderLibrary(" in code) == emulate
    assert "torch.ops.mpsk" not in code
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(got, ref, rtol=TOL, atol=TOL)


def test_dynamic_sequence_length_reuses_one_compilation(model):
    backend, compiled = counting_backend()
    fn = torch.compile(model, backend=backend)
    with mpsk.config.patch(emulate_metal=True), torch.no_grad(), kernel_calls() as calls:
        results = []
        for length in (SEQ, SEQ2):
            x = inputs(length, seed=length)
            torch._dynamo.mark_dynamic(x, 1)
            results.append((fn(x), model(x)))
    assert len(compiled) == 1
    assert calls["run_plan"] == 0
    assert calls["dispatch"]["attn_prefill_float"] == 2
    for got, ref in results:
        torch.testing.assert_close(got, ref, rtol=TOL, atol=TOL)


def test_training_gradients_match_eager():
    torch.manual_seed(1)
    model = Block().train()
    x = inputs(SEQ)
    target = torch.randint(0, CLASSES, (2, SEQ))

    def step(fn):
        model.zero_grad()
        xi = x.clone().requires_grad_()
        out = fn(xi)
        torch.nn.functional.nll_loss(out.log().flatten(0, 1), target.flatten()).backward()
        return out, xi.grad, {n: p.grad for n, p in model.named_parameters()}

    eager = step(model)
    with mpsk.config.patch(emulate_metal=True), kernel_calls() as calls:
        compiled = step(torch.compile(model, backend="mpsk"))
    assert calls["run_plan"] == 0 and calls["dispatch"]
    torch.testing.assert_close(compiled[0], eager[0], rtol=TOL, atol=TOL)
    torch.testing.assert_close(compiled[1], eager[1], rtol=1e-4, atol=1e-4)
    for name, grad in eager[2].items():
        torch.testing.assert_close(compiled[2][name], grad, rtol=1e-4, atol=1e-4, msg=name)


def test_symbolic_row_lengths_take_the_looped_and_online_kernels():
    """A dynamic hidden size: norms and softmax still lower to Metal launches (the looped and online
    forms serve any row length), and one compilation serves several widths."""
    def f(x, w, y):
        ops = torch.ops.mpsk
        return ops.rms_norm(x, w, 1e-6), ops.layer_norm(x, w, w, 1e-5), ops.softmax(y, -1, True)

    backend, compiled = counting_backend()
    fn = torch.compile(f, backend=backend, dynamic=True)
    with mpsk.config.patch(emulate_metal=True), kernel_calls() as calls:
        for width in (40, 70, 133):
            torch.manual_seed(width)
            x, w, y = torch.randn(3, width), torch.randn(width), torch.randn(5, width)
            if width == 40:  # run_and_get_code resets Dynamo, so only the first call goes through it
                got, codes = run_and_get_code(fn, x, w, y)
            else:
                got = fn(x, w, y)
            ref = (norm.rms_norm_reference(x, w, 1e-6), F.layer_norm(x, (width,), w, w, 1e-5),
                   torch.log_softmax(y, -1))
            for g, r in zip(got, ref, strict=True):
                torch.testing.assert_close(g, r, rtol=TOL, atol=TOL)
    assert len(compiled) == 1
    assert calls["run_plan"] == 0
    assert calls["dispatch"] == {"rms_norm_float": 3, "layer_norm_float": 3, "softmax_float": 3}
    code = "\n".join(codes)
    assert "#define NREG 0" in code and "torch.ops.mpsk" not in code


def test_off_metal_every_op_compiles_to_inductor_code():
    """No MPS and no emulation: all five ops become ATen math in Inductor's code, no op call."""
    def f(x, w, q, k, v, cos, sin):
        ops = torch.ops.mpsk
        return (ops.rms_norm(x, w, 1e-6), ops.layer_norm(x, w, w, 1e-5), ops.softmax(x, -1),
                ops.rope(q, cos, sin), ops.attention(q, k, v, None, None, True, 3))

    torch.manual_seed(0)
    x, w = torch.randn(3, 8), torch.randn(8)
    q, k, v = (torch.randn(1, 2, 5, 4) for _ in range(3))
    cos, sin = torch.randn(1, 1, 5, 4), torch.randn(1, 1, 5, 4)
    args = (x, w, q, k, v, cos, sin)
    with mpsk.config.patch(emulate_metal=False):
        got, codes = run_and_get_code(torch.compile(f, backend="inductor"), *args)
        ref = f(*args)  # eager: the ops' own ATen math
    code = "\n".join(codes)
    assert "torch.ops.mpsk" not in code and "ShaderLibrary" not in code
    for g, r in zip(got, ref, strict=True):
        torch.testing.assert_close(g, r, rtol=TOL, atol=TOL)


def test_specialized_sources_include_the_metal_headers_before_any_define():
    """A `#define VEC 4` ahead of `#include <metal_stdlib>` would rewrite every identifier VEC inside
    Apple's headers; the constants come after the standard library is in."""
    from mps_inductor_ext.ops import launch, norm

    plan = norm.norm_plan("rms_norm", torch.float32, 4, 256, 256, 256, has_weight=True, has_bias=False, eps=1e-6,
                          vector_ok=True, policy=mpsk.config.norm)
    source = plan.launches[0].source
    assert source.index("#include <metal_stdlib>") < source.index("#define ")
    assert launch.specialize("kernel void k() {}", {"VEC": 4}).splitlines()[:2] == [
        "#include <metal_stdlib>", "#define VEC 4"]
