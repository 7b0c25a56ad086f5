"""The quantized_linear pattern: QuantizedLinear's forward becomes mpsk.quantized_linear under
backend="mpsk" (Dynamo's graph and torch.export's aten graph), exactly once per layer, and
look-alikes the kernels do not take are near misses with their reasons."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import TOLERANCES, launched_variants
from torch import nn

import mps_inductor_ext as mpsk
from mps_inductor_ext import patterns
from mps_inductor_ext.ops.common import METAL_DTYPES
from mps_inductor_ext.quantization import dequantize, quantize_weight


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.up = nn.Linear(64, 96)
        self.down = nn.Linear(96, 32, bias=False)
        self.head = nn.Linear(32, 8)

    def forward(self, x):
        return self.head(F.silu(self.down(F.silu(self.up(x)))))


def quantized_net(dtype=torch.float32, bits=4) -> nn.Module:
    torch.manual_seed(0)
    return mpsk.quantize(Net().to(dtype), bits=bits, group_size=32)


def compiled(model, *inputs):
    """model under backend="mpsk" on the emulator: (output, kernels launched)."""
    mpsk.reset_counters()
    torch._dynamo.reset()
    with mpsk.config.patch(emulate_metal=True), torch.no_grad(), launched_variants() as seen:
        out = torch.compile(model, backend="mpsk")(*inputs)
    return out, [v.kernel for v in seen]


def close(got, ref):
    tol = TOLERANCES[got.dtype]
    assert got.dtype == ref.dtype and got.shape == ref.shape
    torch.testing.assert_close(got.float(), ref.float(), rtol=tol, atol=tol)


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_every_layer_is_replaced(dtype, bits):
    model = quantized_net(dtype, bits)
    x = (torch.randn(2, 3, 64) / 8).to(dtype)
    got, kernels = compiled(model, x)
    assert mpsk.counters == {"quantized_linear": 3}
    assert kernels == [f"quantized_matvec_{METAL_DTYPES[dtype]}"] * 3
    with torch.no_grad():
        close(got, model(x))


def test_not_replaced_off_metal():
    """Without a Metal runtime (CPU, no emulation) the graph is left to Inductor."""
    model = quantized_net()
    x = torch.randn(3, 64)
    mpsk.reset_counters()
    torch._dynamo.reset()
    with torch.no_grad():
        got = torch.compile(model, backend="mpsk")(x)
        close(got, model(x))
    assert mpsk.counters == {}


def test_switched_off():
    model = quantized_net()
    x = torch.randn(3, 64)
    with mpsk.config.patch(patterns={"quantized_linear": False}):
        _, kernels = compiled(model, x)
    assert mpsk.counters == {} and kernels == []


def test_exported_aten_graph():
    """torch.export's training IR (what aoti_compile_and_package rewrites) spells the same forward
    with aten overloads; every layer is replaced there too, and the graph computes the same."""
    model = quantized_net()
    x = torch.randn(3, 64)
    gm = torch.export.export(model, (x,)).module()
    with mpsk.config.patch(emulate_metal=True):
        done = patterns.apply(gm.graph)
        gm.recompile()
        targets = [n.target for n in gm.graph.nodes if n.op == "call_function"]
        with torch.no_grad():
            close(gm(x), model(x))
    assert done == {"quantized_linear": 3}
    assert targets.count(torch.ops.mpsk.quantized_linear.default) == 3
    assert torch.ops.aten.linear.default not in targets and torch.ops.aten.__rshift__.Tensor not in targets


class MatmulForms(nn.Module):
    """The product written as a matmul with the transposed weight, optionally plus a bias."""

    def __init__(self, form: str, bias: bool, dtype=torch.float32):
        super().__init__()
        torch.manual_seed(0)
        self.form = form
        layer = mpsk.QuantizedLinear.from_linear(nn.Linear(64, 24, bias=bias, dtype=dtype), group_size=64)
        self.layer = layer

    def forward(self, x):
        layer = self.layer
        w = dequantize(layer.w_packed, layer.scales, layer.biases, 64, 4)
        wt = {"T": lambda: w.T, "t": lambda: w.t(), "mT": lambda: w.mT, "transpose": lambda: w.transpose(0, 1),
              "linear": None}[self.form]
        out = F.linear(x, w) if wt is None else (torch.matmul(x, wt()) if self.form == "t" else x @ wt())
        return out if layer.bias is None else out + layer.bias


@pytest.mark.parametrize("form,bias", [(form, bias) for form in ("T", "t", "mT", "transpose") for bias in (False, True)]
                         + [("linear", True)])
def test_matmul_forms_and_a_bias_added_after(form, bias):
    """x @ w.T (any spelling) is the same product; a 1-D bias added after folds into the op."""
    model = MatmulForms(form, bias)
    x = torch.randn(2, 5, 64)
    mpsk.reset_counters()
    torch._dynamo.reset()
    with mpsk.config.patch(emulate_metal=True), torch.no_grad(), launched_variants() as seen:
        got = torch.compile(model, backend="mpsk")(x)
    assert mpsk.counters == {"quantized_linear": 1}
    assert [(v.kernel, v.defines["HAS_BIAS"]) for v in seen] == [("quantized_matmul_float", str(int(bias)))]
    with torch.no_grad():
        close(got, model(x))


def test_exported_matmul_with_bias():
    model = MatmulForms("T", True)
    x = torch.randn(3, 64)
    gm = torch.export.export(model, (x,)).module()
    with mpsk.config.patch(emulate_metal=True):
        assert patterns.apply(gm.graph) == {"quantized_linear": 1}
        gm.recompile()
        with torch.no_grad():
            close(gm(x), model(x))
    targets = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    assert torch.ops.aten.add.Tensor not in targets and torch.ops.aten.matmul.default not in targets


class Dequantizing(nn.Module):
    """A hand-written layer around quantization.dequantize, with knobs that make it a look-alike."""

    def __init__(self, group_size=32, bits=4, mask=None, keep_weight=False, q_dtype=None, dtype=torch.float32):
        super().__init__()
        torch.manual_seed(0)
        self.group_size, self.bits, self.mask, self.keep_weight, self.q_dtype = group_size, bits, mask, keep_weight, \
            q_dtype
        w = torch.randn(16, 64)
        if bits in (4, 8) and group_size in (32, 64, 128):
            w_packed, scales, biases = quantize_weight(w, group_size, bits)
        else:  # a format the package does not make: any values of the right shapes
            w_packed = torch.randint(-2**31, 2**31 - 1, (16, 64 * bits // 32), dtype=torch.int32)
            scales, biases = torch.rand(16, 64 // group_size) / 8, torch.randn(16, 64 // group_size)
        self.register_buffer("w_packed", w_packed)
        self.register_buffer("scales", scales.to(dtype))
        self.register_buffer("biases", biases.to(dtype))

    def forward(self, x):
        if self.mask is None and self.q_dtype is None:
            w = dequantize(self.w_packed, self.scales, self.biases, self.group_size, self.bits)
        else:
            q = (self.w_packed.unsqueeze(-1) >> torch.arange(0, 32, self.bits, dtype=torch.int32)) & self.mask
            q = q.reshape(16, -1, self.group_size).to(self.q_dtype or self.scales.dtype)
            w = (q * self.scales.unsqueeze(-1) + self.biases.unsqueeze(-1)).reshape(16, -1)
        out = F.linear(x, w)
        return (out, w) if self.keep_weight else out


def test_the_hand_written_form_is_replaced():
    """The look-alike module below with its knobs at the format's values is the pattern itself."""
    model = Dequantizing(mask=15)
    x = torch.randn(3, 64)
    got, kernels = compiled(model, x)
    assert mpsk.counters == {"quantized_linear": 1} and kernels == ["quantized_matvec_float"]
    close(got, model(x))


@pytest.mark.parametrize("model,dtype,reason", [
    (Dequantizing(group_size=16), torch.float32, "group size 16: the kernels take (32, 64, 128)"),
    (Dequantizing(bits=2), torch.float32, "shifts other than arange(0, 32, b) for b in (4, 8)"),
    (Dequantizing(mask=7), torch.float32, "the mask 7 does not take 4-bit values"),
    (Dequantizing(keep_weight=True), torch.float32, "is used elsewhere"),
    (Dequantizing(mask=15, q_dtype=torch.float32, dtype=torch.float16), torch.float32,
     "the scales torch.float16, the biases torch.float16 and q is cast to torch.float32"),
    (Dequantizing(dtype=torch.float64), torch.float64, "float64 has no Metal kernel"),
], ids=["group16", "bits2", "mask", "reused", "mixed_dtypes", "float64"])
def test_near_misses_are_left_to_inductor_and_reported(model, dtype, reason):
    x = torch.randn(3, 64, dtype=dtype)
    with mpsk.config.patch(emulate_metal=True):
        report = mpsk.explain(model, x)
    assert not [r for g in report.graphs for r in g.replacements]
    near = [n for g in report.graphs for n in g.near_misses]
    assert any(n.kind == "quantized_linear" and reason in n.reason for n in near), near
    got, kernels = compiled(model, x)
    assert mpsk.counters == {} and kernels == []
    with torch.no_grad():
        want = model(x)
    for g, r in zip(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,),
                    strict=True):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-5)
