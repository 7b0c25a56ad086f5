"""Kernel launches per decoder layer of Hugging Face Llama on the emulated mps device, backend="mpsk"
against backend="inductor", for a 16-token prefill and a decode step with a static KV cache: the
program a Mac runs, counted by benchmarks/launches.py (which prints the whole table).

Per layer is the difference between a 2-layer and a 1-layer model, so the per-forward work
(embedding, first norm, cos/sin, the mask, LM head) is not in it. The counts are exact: a change
that adds or removes a launch must say so here.

mpsk today: each residual add is inside the norm after it (add_rms_norm: 2 launches fewer per
layer than with the add_rms_norm pattern off, measured), and the static-cache mask is computed once
per forward, not once per layer (1 fewer). Per decode layer that leaves 7 matmuls, q and k RoPE (2),
the k and v cache writes (2, Inductor kernels), attention, two add_rms_norm, SwiGLU's silu * up and
the cache's length update: 16, as many as Inductor's. Prefill adds the contiguous copies of q and k
before RoPE, cos/sin per layer and the attention output's copy: 24 against Inductor's 19. RoPE
reading strides, q and k in one launch, and k/v written into the cache by the RoPE launch are next
(issue 15).
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))

import launches  # noqa: E402

PREFILL = 16


@functools.cache
def counts(backend: str, layers: int) -> dict[str, int]:
    got = launches.count(launches.HFLlamaRunner(layers), backend, PREFILL)
    return {phase: n.total for phase, n in got.items()}


def per_layer(backend: str) -> dict[str, int]:
    two, one = counts(backend, 2), counts(backend, 1)
    return {phase: two[phase] - one[phase] for phase in two}


@pytest.mark.slow
def test_mpsk_launches_per_layer():
    assert per_layer("mpsk") == {"prefill": 24, "decode": 16}


@pytest.mark.slow
def test_inductor_launches_per_layer():
    assert per_layer("inductor") == {"prefill": 19, "decode": 16}
