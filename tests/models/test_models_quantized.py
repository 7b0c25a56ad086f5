"""A tiny Llama with 4-bit weights (mpsk.quantize) under backend="mpsk" on the emulator: every linear
layer becomes mpsk.quantized_linear, beside the other families' replacements, and the compiled
model computes what the eager quantized model does: logits, greedy decoding through the KV cache,
and an AOTInductor package run in a fresh process."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import TOLERANCES, launched_variants
from test_aoti_package import RUN_SEQS, generated_cpp, ids, package, run_in_fresh_process
from torch import nn

import mps_inductor_ext as mpsk
from mps_inductor_ext.models.tiny_llama import KVCache, TinyLlama, TinyLlamaConfig

TOL = TOLERANCES[torch.float32]
VOCAB = 128


def quantized_llama() -> TinyLlama:
    torch.manual_seed(0)
    return mpsk.quantize(TinyLlama(TinyLlamaConfig(vocab_size=VOCAB)).eval(), bits=4, group_size=32)


def expected_counts(model: TinyLlama) -> dict[str, int]:
    """Every linear: q, k, v, o and the MLP's gate, up and down in each layer, and the LM head."""
    linears = sum(isinstance(m, mpsk.QuantizedLinear) for m in model.modules())
    assert linears == 7 * model.config.num_layers + 1 and not any(type(m) is nn.Linear for m in model.modules())
    return {**model.expected_replacements(), "quantized_linear": linears}


def test_logits_equal_eager():
    model, tokens = quantized_llama(), ids(9)
    mpsk.reset_counters()
    torch._dynamo.reset()
    with mpsk.config.patch(emulate_metal=True), torch.no_grad(), launched_variants() as seen:
        got = torch.compile(model, backend="mpsk")(tokens)
    assert dict(mpsk.counters) == expected_counts(model)
    quantized = [v.kernel for v in seen if v.kernel.startswith("quantized_")]
    assert quantized == ["quantized_matmul_float"] * expected_counts(model)["quantized_linear"]  # 18 rows
    with torch.no_grad():
        torch.testing.assert_close(got, model(tokens), rtol=TOL, atol=TOL)


def greedy(model, config: TinyLlamaConfig, prompt: torch.Tensor, steps: int) -> list[int]:
    """Prefill the prompt into a static cache, then one token at a time, each the argmax of the last."""
    cache = KVCache(config, 1, prompt.shape[1] + steps)
    logits = model(prompt, cache, torch.arange(prompt.shape[1]))
    tokens = [int(logits[0, -1].argmax())]
    for i in range(steps - 1):
        logits = model(torch.tensor([[tokens[-1]]]), cache, torch.tensor([prompt.shape[1] + i]))
        tokens.append(int(logits[0, -1].argmax()))
    return tokens


@pytest.mark.slow
def test_greedy_generate_equals_eager():
    """Prefill runs the kernel on 6 rows, each decode step on 1 (its own ROWS=1 variant)."""
    model, prompt = quantized_llama(), ids(6)[:1]
    mpsk.reset_counters()
    torch._dynamo.reset()
    with torch.no_grad():
        want = greedy(model, model.config, prompt, 6)
        with mpsk.config.patch(emulate_metal=True), launched_variants() as seen:
            got = greedy(torch.compile(model, backend="mpsk"), model.config, prompt, 6)
    assert got == want
    linears = expected_counts(model)["quantized_linear"]
    rows = [v.defines["ROWS"] for v in seen if v.kernel == "quantized_matvec_float"]
    assert rows == ["6"] * linears + ["1"] * linears * 5
    assert mpsk.counters["quantized_linear"] == linears * 2  # one prefill graph, one decode graph


@pytest.mark.slow
def test_aoti_package_runs_in_a_fresh_process(tmp_path):
    model = quantized_llama()
    path, counts = package(model, tmp_path, "quantized_llama")
    assert counts == expected_counts(model)
    cpp = generated_cpp(path)
    # The package looks a quantized kernel up itself (the matmul: the exported length is dynamic, decided
    # above matvec_max_rows by its hint) and calls no mpsk op through the proxy executor.
    assert re.search(r'get_kernel_function\([^,]+, "quantized_(matvec|matmul)_float"', cpp)
    assert "mpsk::" not in cpp and "proxy_executor_call_function" not in cpp
    outputs = run_in_fresh_process(path, tmp_path)
    with torch.no_grad():
        for got, tokens in zip(outputs, (ids(n, seed=1) for n in RUN_SEQS), strict=True):
            torch.testing.assert_close(got, model(tokens), rtol=TOL, atol=TOL)


@pytest.mark.slow
def test_readme_command_runs():
    """The README's "4-bit weights" command, as written there, in a fresh process."""
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme.split("## 4-bit weights", 1)[1].split("\n## ", 1)[0]
    (command,) = re.findall(r"```sh\n(.*?)```", section, re.S)
    env_assign, script = re.fullmatch(r'(\w+=\S+) python -c "(.*)"\n', command, re.S).groups()
    name, value = env_assign.split("=")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, check=False,
                          env={**os.environ, name: value})
    assert proc.returncode == 0, proc.stderr[-4000:]
    for printed in ("'quantized_linear': 15", "'rms_norm': 1", "'add_rms_norm': 4"):
        assert printed in proc.stdout, proc.stdout
