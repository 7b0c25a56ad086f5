"""Real models under backend="mpsk": Hugging Face Llama, Mistral (sliding window) and GPT-2.

Each model is built from a tiny config with random weights (nothing is downloaded) in both the
"sdpa" and "eager" attention implementations, and compiled once, in training mode with the
sequence length marked dynamic: one compilation answers every question below, so the module
stays within a few minutes while the Metal kernels run on the CPU emulator. The tests then
check, each on its own so that one failure does not hide the others:

- the replacement counts, derived from the modeling code (see `expected_counts`);
- the replaced ops' Metal kernels ran (on the emulator), not an ATen fallback;
- logits equal to eager PyTorch at two sequence lengths (dropout is 0, so training mode
  computes what inference does);
- gradients of every parameter equal to eager after `loss.backward()`;
- no more graph breaks than `backend="inductor"`;
- no recompilation for the second sequence length.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
from unittest import mock

import pytest
import torch
from helpers import TOLERANCES

import mps_inductor_ext as mpsk
from mps_inductor_ext.shaders.runtime import KernelFunction

transformers = pytest.importorskip("transformers")

from hf_models import VOCAB, build, expected_counts  # noqa: E402

SEQ, SEQ2 = 12, 9  # the second length must reuse the first compilation
TOL = TOLERANCES[torch.float32]  # the ops' float32 tolerance (rtol = atol)
IMPLS = ("sdpa", "eager")
MODELS = ("llama", "mistral", "gpt2")


@dataclasses.dataclass
class Run:
    counts: dict[str, int]
    expected: dict[str, int]
    logits: list[tuple[torch.Tensor, torch.Tensor]]  # (compiled, eager) per sequence length
    grads: list[tuple[dict, dict]]  # (compiled, eager) gradients by parameter name, per sequence length
    parameters: set[str]
    launches: collections.Counter  # Metal kernel dispatches by kind
    graph_breaks: int
    graphs_after_first: int
    graphs_after_second: int


def inputs(length: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (1, length), generator=g)


def step(fn, model, ids):
    """One training step's forward and backward; the logits and every parameter's gradient."""
    model.zero_grad(set_to_none=True)
    out = fn(input_ids=ids, labels=ids)
    out.loss.backward()
    return out.logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def compile_and_step(model, backend: str, lengths=(SEQ, SEQ2)):
    """Fresh Dynamo state; steps at each length with the first call's length marked dynamic."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    mpsk.reset_counters()
    compiled = torch.compile(model, backend=backend)
    results, graphs, counts = [], [], None
    for i, length in enumerate(lengths):
        ids = inputs(length, seed=i)
        if i == 0:
            torch._dynamo.mark_dynamic(ids, 1)
        results.append(step(compiled, model, ids))
        graphs.append(torch._dynamo.utils.counters["stats"]["unique_graphs"])
        counts = counts if counts is not None else dict(mpsk.counters)  # the first compilation's
    breaks = sum(torch._dynamo.utils.counters["graph_break"].values())
    return results, graphs, breaks, counts


def run(name: str, impl: str) -> Run:
    """The model's one compilation, shared by the tests; a failure is kept and raised to each."""
    result = _run(name, impl)
    if isinstance(result, BaseException):
        raise result
    return result


@functools.cache
def _run(name: str, impl: str) -> Run | BaseException:
    try:
        return _compile_and_compare(name, impl)
    except Exception as e:  # noqa: BLE001 - re-raised by run() for every test of this model
        return e


# Kernel name prefixes (ops/*.py plan builders) -> replacement kind.
KERNEL_KINDS = {"rms_norm_": "rms_norm", "layer_norm_": "layer_norm", "add_rms_norm_": "add_rms_norm",
                "add_layer_norm_": "add_layer_norm", "rope_qk_": "rope_qk",
                "rope_": "rope", "attn_": "attention", "softmax_": "softmax"}


@contextlib.contextmanager
def recording_launches():
    """Counts Metal kernel dispatches by kind, at the shader runtime, which both the eager op and
    Inductor-generated launch code go through (a result equal to eager could also come from an
    ATen fallback; this shows the Metal kernels ran)."""
    launches: collections.Counter = collections.Counter()
    real = KernelFunction.dispatch

    def spy(self, *args, **kwargs):
        kind = next((k for p, k in KERNEL_KINDS.items() if self.name.startswith(p)), self.name)
        launches[kind] += 1
        return real(self, *args, **kwargs)

    with mock.patch.object(KernelFunction, "dispatch", spy):
        yield launches


def _compile_and_compare(name: str, impl: str) -> Run:
    model = build(name, impl).train()
    eager = [step(model, model, inputs(length, seed=i)) for i, length in enumerate((SEQ, SEQ2))]
    with mpsk.config.patch(emulate_metal=True), recording_launches() as launches:
        compiled, graphs, breaks, counts = compile_and_step(model, "mpsk")
    return Run(
        counts=counts,
        expected=expected_counts(name, model.config),
        logits=[(c[0], e[0]) for c, e in zip(compiled, eager, strict=True)],
        grads=[(c[1], e[1]) for c, e in zip(compiled, eager, strict=True)],
        parameters={n for n, _ in model.named_parameters()},
        launches=launches,
        graph_breaks=breaks,
        graphs_after_first=graphs[0],
        graphs_after_second=graphs[1],
    )


@functools.cache
def inductor_graph_breaks(name: str, impl: str) -> int:
    """Graph breaks of the same steps under backend="inductor"."""
    return compile_and_step(build(name, impl).train(), "inductor")[2]


CASES = [pytest.param(m, i, id=f"{m}-{i}", marks=pytest.mark.slow) for m in MODELS for i in IMPLS]


@pytest.mark.parametrize("name,impl", CASES)
def test_replacement_counts(name, impl):
    r = run(name, impl)
    assert r.counts == r.expected


@pytest.mark.parametrize("name,impl", CASES)
def test_metal_kernels_ran_on_the_emulator(name, impl):
    assert set(run(name, impl).launches) == set(expected_counts(name, build(name, impl).config))


@pytest.mark.parametrize("name,impl", CASES)
def test_logits_match_eager(name, impl):
    for got, ref in run(name, impl).logits:
        torch.testing.assert_close(got, ref, rtol=TOL, atol=TOL)


@pytest.mark.parametrize("name,impl", CASES)
def test_gradients_match_eager(name, impl):
    r = run(name, impl)
    for got, ref in r.grads:
        assert set(got) == set(ref) == r.parameters  # every parameter receives a gradient
        for key in ref:
            torch.testing.assert_close(got[key], ref[key], rtol=TOL, atol=TOL, msg=lambda m, k=key: f"{k}: {m}")


@pytest.mark.parametrize("name,impl", CASES)
def test_no_more_graph_breaks_than_inductor(name, impl):
    breaks = run(name, impl).graph_breaks
    if breaks:  # with none, there is nothing inductor could beat; its compile is skipped for time
        assert breaks <= inductor_graph_breaks(name, impl)


@pytest.mark.parametrize("name,impl", CASES)
def test_dynamic_sequence_length_does_not_recompile(name, impl):
    r = run(name, impl)
    assert r.graphs_after_first >= 1
    assert r.graphs_after_second == r.graphs_after_first


@pytest.mark.slow
def test_mistral_window_matters():
    """The window is shorter than the sequence, so it changes the result: matching eager shows it is applied."""
    ids = inputs(SEQ, seed=0)
    with torch.no_grad():
        windowed = build("mistral", "sdpa")(input_ids=ids).logits
        full = build("mistral", "sdpa", sliding_window=None)(input_ids=ids).logits
    assert not torch.allclose(windowed, full, rtol=TOL, atol=TOL)


def greedy_tokens(model, ids: torch.Tensor, new: int = 4) -> list[int]:
    with torch.no_grad(), mpsk.config.patch(emulate_metal=True):
        out = model.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                             cache_implementation="static", disable_compile=True, pad_token_id=0)
    return out[0].tolist()


@pytest.mark.slow
def test_generate_runs_compiled_only_when_the_modules_calls_are():
    """The README's forms: `model.compile(backend="mpsk")` makes generate's forward calls compiled
    (replacements counted, eager's tokens); `torch.compile(model).generate` is the original
    module's method, so it compiles nothing."""
    ids = inputs(6, seed=3)
    expected = greedy_tokens(build("llama", "sdpa").eval(), ids)

    torch._dynamo.reset()
    mpsk.reset_counters()
    wrapped = torch.compile(build("llama", "sdpa").eval(), backend="mpsk")
    assert greedy_tokens(wrapped, ids) == expected and not mpsk.counters

    torch._dynamo.reset()
    model = build("llama", "sdpa").eval()
    model.compile(backend="mpsk")
    assert greedy_tokens(model, ids) == expected
    assert mpsk.counters["rms_norm"] > 0 and mpsk.counters["attention"] > 0
