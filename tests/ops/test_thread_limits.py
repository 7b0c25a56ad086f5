"""Pipelines whose thread limit is below 1024 (maxTotalThreadsPerThreadgroup, which a Mac reports per
compiled kernel: 640-896 is seen for heavy ones). With the emulator's limit lowered
(MPSK_EMULATOR_MAX_THREADS), the row kernels that ask for 1024-thread groups at 4096+ columns must fit
their groups to the kernel, in the eager op, the Python wrapper and the C++ (AOTI) wrapper alike."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import TOLERANCES, launched_variants

import mps_inductor_ext as mpsk
from mps_inductor_ext.config import NormPolicy
from mps_inductor_ext.shaders.emulator.library import THREAD_LIMIT_VARIABLE, pipeline_thread_limit

TOL = TOLERANCES[torch.float32]
LIMITS = (768, 512)
COLS = (4096, 8192)


class RowOps(torch.nn.Module):
    def forward(self, x, w):
        mpsk_ops = torch.ops.mpsk
        return mpsk_ops.rms_norm(x, w, 1e-6), mpsk_ops.layer_norm(x, w, None, 1e-5), mpsk_ops.softmax(x, 1)


def reference(x, w):
    rms = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w
    return rms, F.layer_norm(x, (x.shape[-1],), w, None, 1e-5), x.softmax(1)


def inputs(cols):
    g = torch.Generator().manual_seed(cols)
    return torch.randn(3, cols, generator=g), torch.randn(cols, generator=g)


def check(got, x, w):
    for g, r in zip(got, reference(x, w), strict=True):
        torch.testing.assert_close(g, r, rtol=TOL, atol=TOL)


@pytest.fixture(params=LIMITS, ids=lambda n: f"limit{n}")
def limit(request, monkeypatch):
    monkeypatch.setenv(THREAD_LIMIT_VARIABLE, str(request.param))
    return request.param


@pytest.mark.parametrize("cols", COLS)
def test_eager_ops_fit_their_groups(limit, cols):
    x, w = inputs(cols)
    with mpsk.config.patch(emulate_metal=True), launched_variants() as launched:
        got = RowOps()(x, w)
    check(got, x, w)
    assert [v.kernel for v in launched] == ["rms_norm_float", "layer_norm_float", "softmax_float"]


@pytest.mark.parametrize("cols", COLS)
def test_compiled_python_wrapper_fits_its_groups(limit, cols):
    x, w = inputs(cols)
    torch._dynamo.reset()
    # The plan is fitted when the graph is compiled: no cached compilation from another limit.
    with mpsk.config.patch(emulate_metal=True), torch._inductor.config.patch(fx_graph_cache=False):
        got = torch.compile(RowOps(), backend="mpsk")(x, w)
    check(got, x, w)


@pytest.mark.slow
def test_aoti_wrapper_fits_its_groups(limit, tmp_path):
    x, w = inputs(4096)
    with mpsk.config.patch(emulate_metal=True), torch._inductor.config.patch(fx_graph_cache=False):
        path = mpsk.aoti_compile_and_package(RowOps(), (x, w), tmp_path / "rows.pt2")
    check(mpsk.aoti_load_package(path)(x, w), x, w)


def test_a_fixed_group_above_the_limit_is_named(monkeypatch):
    monkeypatch.setenv(THREAD_LIMIT_VARIABLE, "512")
    x, w = inputs(4096)
    with mpsk.config.patch(emulate_metal=True, norm=NormPolicy(threads_per_row=1024)), \
            pytest.raises(RuntimeError, match=r"'rms_norm_float' takes at most 512 threads per threadgroup"):
        torch.ops.mpsk.rms_norm(x, w, 1e-6)


@pytest.mark.parametrize("raw", ["0", "48", "2048", "many"])
def test_the_knob_takes_multiples_of_32_up_to_1024(monkeypatch, raw):
    monkeypatch.setenv(THREAD_LIMIT_VARIABLE, raw)
    with pytest.raises(ValueError, match=f"{THREAD_LIMIT_VARIABLE} must be a multiple of 32"):
        pipeline_thread_limit()
    monkeypatch.delenv(THREAD_LIMIT_VARIABLE)
    assert pipeline_thread_limit() == 1024


@pytest.mark.slow
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_models_at_lower_limits(limit, family):
    """A decoder whose hidden size (4096) asks the row kernels for 1024-thread groups: compiled with
    backend="mpsk" under a lowered limit it replaces what it does at 1024 and matches eager."""
    from hf_models import build, expected_counts

    model = build(family, "sdpa", hidden_size=4096, num_hidden_layers=1, num_attention_heads=32,
                  **({} if family == "gpt2" else {"num_key_value_heads": 8, "intermediate_size": 256})).eval()
    ids = torch.randint(0, 128, (1, 5), generator=torch.Generator().manual_seed(1))
    torch._dynamo.reset()
    mpsk.reset_counters()
    with torch.no_grad(), mpsk.config.patch(emulate_metal=True), launched_variants() as launched, \
            torch._inductor.config.patch(fx_graph_cache=False):
        got = torch.compile(model, backend="mpsk")(ids).logits
    assert dict(mpsk.counters) == expected_counts(family, model.config)
    row_groups = [v for v in launched if v.kernel.startswith(("rms_norm", "layer_norm"))]
    assert row_groups, "the row kernels must have run"
    with torch.no_grad():
        ref = model(ids).logits
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


def test_every_doctor_case_passes_at_lower_limits(limit):
    """Every op family's doctor cases (rows past 4096 columns, attention prefill and decode, rope)."""
    import io

    from mps_inductor_ext.diagnostics import doctor

    out = io.StringIO()
    assert doctor.run("cpu", out=out) == 0, out.getvalue()
