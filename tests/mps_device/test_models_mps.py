"""Hugging Face models on the emulated mps device: the program a Mac runs, run here.

`model.to("mps")` and `torch.compile(model, backend="mpsk")`, unchanged: Inductor's MPS codegen writes
its Metal and its `mps` Python wrapper, the mpsk kernels run through the shader runtime's `mps`
backend, and both reach the Metal emulator through torch.mps.compile_shader; extern ATen calls
run their CPU kernels. Inference, each model compiled once with its sequence length dynamic:

- the replacement counts, derived from the modeling code (hf_models.expected_counts), and the
  mpsk kernels launched (not an ATen fallback);
- logits equal to eager on the CPU at two sequence lengths, without a recompilation;
- greedy generate() of 16 tokens with a static KV cache gives eager's tokens.
"""

from __future__ import annotations

import dataclasses
import functools

import pytest
import torch

import mps_inductor_ext as mpsk

pytest.importorskip("transformers")

from helpers import TOLERANCES  # noqa: E402
from hf_models import FAMILIES, VOCAB, build, expected_counts  # noqa: E402

SEQ, SEQ2 = 12, 9
NEW_TOKENS = 16
TOL = TOLERANCES[torch.float32]  # the ops' float32 tolerance (rtol = atol)


def inputs(length: int, seed: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, (1, length), generator=torch.Generator().manual_seed(seed))


@dataclasses.dataclass
class Run:
    counts: dict[str, int]
    expected: dict[str, int]
    logits: list[tuple[torch.Tensor, torch.Tensor]]  # (compiled on mps, eager on cpu) per length
    devices: set[str]
    mpsk_launches: int
    graphs: list[int]  # unique graphs after each length


@functools.cache
def _run(name: str) -> Run | BaseException:
    try:
        return _compile_and_compare(name)
    except Exception as e:  # noqa: BLE001 - re-raised by run() for every test of this model
        return e


def run(name: str) -> Run:
    result = _run(name)
    if isinstance(result, BaseException):
        raise result
    return result


def _compile_and_compare(name: str) -> Run:
    model = build(name, "sdpa").eval()
    with torch.no_grad():
        eager = [model(input_ids=inputs(n, seed=i)).logits for i, n in enumerate((SEQ, SEQ2))]
    model.to("mps")
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    mpsk.reset_counters()
    compiled = torch.compile(model, backend="mpsk")
    logits, graphs, counts = [], [], None
    with torch.no_grad(), mpsk.count_launches() as launches:
        for i, n in enumerate((SEQ, SEQ2)):
            ids = inputs(n, seed=i).to("mps")
            if i == 0:
                torch._dynamo.mark_dynamic(ids, 1)
            logits.append(compiled(input_ids=ids).logits)
            graphs.append(torch._dynamo.utils.counters["stats"]["unique_graphs"])
            counts = counts if counts is not None else dict(mpsk.counters)
    return Run(
        counts=counts,
        expected=expected_counts(name, model.config),
        logits=[(got.cpu(), ref) for got, ref in zip(logits, eager, strict=True)],
        devices={t.device.type for t in logits},
        mpsk_launches=launches.mpsk_kernels,
        graphs=graphs,
    )


CASES = [pytest.param(m, id=m, marks=pytest.mark.slow) for m in FAMILIES]


@pytest.mark.parametrize("name", CASES)
def test_replacement_counts(name):
    r = run(name)
    assert r.counts == r.expected


@pytest.mark.parametrize("name", CASES)
def test_logits_match_eager_cpu(name):
    r = run(name)
    assert r.devices == {"mps"}
    for got, ref in r.logits:
        torch.testing.assert_close(got, ref, rtol=TOL, atol=TOL)


@pytest.mark.parametrize("name", CASES)
def test_mpsk_kernels_ran(name):
    # At least one launch per replaced op per forward (a plan may launch more than one kernel).
    r = run(name)
    assert r.mpsk_launches >= 2 * sum(r.expected.values())


@pytest.mark.parametrize("name", CASES)
def test_dynamic_sequence_length_does_not_recompile(name):
    r = run(name)
    assert r.graphs[0] >= 1 and r.graphs[1] == r.graphs[0]


def greedy(model, ids: torch.Tensor) -> list[int]:
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False,
                             cache_implementation="static", disable_compile=True, pad_token_id=0)
    return out[0].tolist()


@pytest.mark.parametrize("name", CASES)
def test_greedy_generation_with_a_static_cache_gives_eagers_tokens(name):
    model = build(name, "sdpa").eval()
    ids = inputs(6, seed=7)
    expected = greedy(model, ids)
    model.to("mps")
    torch._dynamo.reset()
    mpsk.reset_counters()
    model.forward = torch.compile(model.forward, backend="mpsk")
    got = greedy(model, ids.to("mps"))
    assert len(got) == ids.shape[1] + NEW_TOKENS
    assert got == expected
    per_graph = expected_counts(name, model.config)
    # Two graphs (prefill, then every decode step with its one-token query), both replaced.
    assert dict(mpsk.counters) == {k: 2 * v for k, v in per_graph.items()}


def squared_logits(logits: torch.Tensor) -> torch.Tensor:
    """A training loss whose compiled form reduces floats only (see the cross-entropy test below)."""
    return logits.float().pow(2).mean()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_training_step_gradients_match_eager_cpu(name):
    """Training on the device: autograd runs the compiled backward (Inductor's Metal, the mpsk ops'
    backward) on mps, and every parameter's gradient equals eager's on the CPU."""
    model = build(name, "sdpa").train()
    ids = inputs(SEQ, seed=3)
    squared_logits(model(input_ids=ids).logits).backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    model.to("mps")
    torch._dynamo.reset()
    mpsk.reset_counters()
    squared_logits(torch.compile(model, backend="mpsk")(input_ids=ids.to("mps")).logits).backward()
    assert dict(mpsk.counters) == expected_counts(name, model.config)
    for n, p in model.named_parameters():
        assert p.grad is not None and p.grad.device.type == "mps", n
        torch.testing.assert_close(p.grad.cpu(), expected[n], rtol=TOL, atol=TOL, msg=lambda m, n=n: f"{n}: {m}")


@pytest.mark.slow
def test_compiled_cross_entropy_reads_lanes_never_launched_and_says_so():
    """Inductor's mean cross-entropy counts non-ignored targets with c10's 64-bit simd_sum, which for
    fewer than 32 targets reads SIMD lanes no thread was launched for (undefined in Metal). The
    emulator warns and poisons, so the loss is not eager's; on a Mac the value depends on the GPU."""
    from mps_inductor_ext.shaders.errors import UndefinedBehaviorWarning

    model = build("llama", "sdpa").eval().to("mps")
    ids = inputs(SEQ, seed=4).to("mps")
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="mpsk")
    with torch.no_grad(), pytest.warns(UndefinedBehaviorWarning, match="simd_shuffle_and_fill_down .* inactive"):
        compiled(input_ids=ids, labels=ids)


def test_hugging_face_takes_its_mac_branch():
    """With MPS available, transformers calls SDPA with enable_gqa=True even under a mask (elsewhere it
    repeats K/V first): the models above run the graph a Mac builds."""
    from transformers.integrations import sdpa_attention

    k = v = torch.zeros(1, 2, 5, 16, device="mps")
    assert sdpa_attention.use_gqa_in_sdpa(torch.ones(1, 1, 5, 5, dtype=torch.bool, device="mps"), k, v)
