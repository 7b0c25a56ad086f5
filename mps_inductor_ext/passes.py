"""The mpsk graph pass: every pattern family, run through Inductor's pre-grad custom-pass hook."""

from __future__ import annotations

import collections
import hashlib
import json
from pathlib import Path

import torch
from torch._inductor.custom_graph_pass import CustomGraphPass, get_hash_for_files

from . import config, diagnostics, patterns

# Replacements by kind ("rms_norm", ...) over compilations since reset_counters().
counters: collections.Counter = collections.Counter()


def reset_counters() -> None:
    """Clears `counters` in place, so references to it stay valid."""
    counters.clear()


def check_patterns_setting() -> None:
    """config.patterns may have been edited in place, past assignment's validation: check it again."""
    unknown = set(config.patterns) - set(config.PATTERNS)
    if unknown:
        known = list(config.PATTERNS)
        raise ValueError(f"config.patterns has unknown pattern name(s) {sorted(unknown)}; known: {known}")
    bad = {k: v for k, v in config.patterns.items() if not isinstance(v, bool)}
    if bad:
        raise TypeError(f"config.patterns values must be bools, got {bad}")


class MpskGraphPass(CustomGraphPass):
    """Replaces RMSNorm, LayerNorm, softmax, attention and RoPE subgraphs with mpsk ops."""

    def __call__(self, graph: torch.fx.Graph) -> None:
        check_patterns_setting()
        done = patterns.apply(graph)
        counters.update(done)
        graph.lint()

    def uuid(self) -> str:
        """Changes whenever the pass could rewrite a graph differently, keeping the FX graph cache honest."""
        sources = tuple(sorted(str(p) for p in Path(patterns.__file__).parent.glob("*.py"))) + (__file__,)
        settings = {"patterns": config.patterns, "emulate_metal": config.emulate_metal}
        digest = hashlib.sha256(get_hash_for_files(sources))
        digest.update(json.dumps(settings, sort_keys=True).encode())
        return digest.hexdigest()


class RecordAtenGraph(CustomGraphPass):
    """Shows the post-grad aten graph to an active diagnostics collector; changes nothing."""

    def __call__(self, graph: torch.fx.Graph) -> None:
        if graph.owning_module is not None:
            diagnostics.record_graph(graph.owning_module, "aten")

    def uuid(self) -> str:
        return "mpsk-record-aten-graph-1"
