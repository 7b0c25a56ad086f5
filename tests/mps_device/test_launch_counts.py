"""Kernel launches per decoder layer of Hugging Face Llama on the emulated mps device, backend="mpsk"
against backend="inductor", for a 16-token prefill and a decode step with a static KV cache: the
program a Mac runs, counted by benchmarks/launches.py (which prints the whole table).

Per layer is the difference between a 2-layer and a 1-layer model, so the per-forward work
(embedding, first norm, cos/sin, the mask, LM head) is not in it. The counts are exact: a change
that adds or removes a launch must say so here.

mpsk today: each residual add is inside the norm after it (add_rms_norm: 2 launches fewer per
layer than with that pattern off, measured), the static-cache mask is computed once per forward, not
once per layer (1 fewer), RoPE reads q and k through their strides (no contiguous copies before it in
prefill: 2 fewer) and rotates both in one launch (rope_qk: 1 fewer). Per decode layer that leaves 7
matmuls, rope_qk, the k and v cache writes (2, Inductor kernels), attention, two add_rms_norm,
SwiGLU's silu * up and the cache's length update: 15, one fewer than Inductor's 16. Prefill: 21
against Inductor's 19. Writing the rotated k and v into the cache from the RoPE launch is next
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
    assert per_layer("mpsk") == {"prefill": 21, "decode": 15}


@pytest.mark.slow
def test_mpsk_decode_layer_launches_fewer_kernels_than_inductor():
    assert per_layer("mpsk")["decode"] < per_layer("inductor")["decode"]


@pytest.mark.slow
def test_inductor_launches_per_layer():
    assert per_layer("inductor") == {"prefill": 19, "decode": 16}
